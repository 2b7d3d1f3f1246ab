"""Peak training memory and step time per method, each in a fresh process (so peaks do not mix), side by side.

CPU: peak resident set size of the process (ru_maxrss). GPU: torch.cuda.max_memory_allocated. The step is what
training runs: forward, cross-entropy, backward, AdamW update of the trainable tensors. Beside the peak, the
activations autograd keeps between forward and backward (distinct storages, model weights excluded): exact and
allocator-independent, where CPU peak RSS also counts freed memory the allocator has not returned.

    python -m adapterbank.benchmarks.train_memory METHOD ARCH BATCH STEPS RANK OPTIONS_JSON SIZE   (prints JSON)
"""

from __future__ import annotations

import contextlib
import json
import resource
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

METHODS = ("full", "linear", "lora", "ssf", "snell")


@dataclass
class MemoryRow:
    method: str
    peak_mib: float
    saved_mib: float
    step_seconds: float
    trainable: int
    device: str


def measure_one(
    method: str, arch: str, batch: int, steps: int, rank: int, options: dict | None = None, size: int = 0
) -> dict:
    """One method's peak and step time; `size` > 0: images of that size (ViT/Swin resampled to it), else the
    architecture's own input size."""
    import torch
    import torch.nn.functional as F

    from adapterbank.backbones import adapt_input_size
    from adapterbank.methods import METHODS
    from adapterbank.tuned import tune

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    fields = METHODS[method].config_type.__dataclass_fields__
    chosen = {k: v for k, v in {"rank": rank, **(options or {})}.items() if k in fields}
    model = tune(arch, method, 100, **chosen)
    channels, height, width = model.model.pretrained_cfg["input_size"]
    if size:
        adapt_input_size(model.model, size)
        height = width = size
    model = model.to(device).train()
    optimizer = torch.optim.AdamW(model.param_groups(1e-4), lr=1e-4)
    images = torch.randn(batch, channels, height, width, device=device)
    labels = torch.randint(0, 100, (batch,), device=device)
    weights = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers())}
    saved: dict[int, int] = {}

    def keep(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in weights:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    times = []
    for step in range(steps + 1):  # the first step allocates optimizer state; it is not timed
        start = time.perf_counter()
        with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t) if step == 0 else contextlib.nullcontext():
            loss = F.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {
        "method": method,
        "peak_mib": peak,
        "saved_mib": sum(saved.values()) / 2**20,
        "step_seconds": sorted(times[1:])[len(times[1:]) // 2],
        "trainable": model.num_trainable(),
        "device": device.type,
    }


def train_memory(
    arch: str = "vit_base_patch16_224",
    batch: int = 32,
    steps: int = 2,
    rank: int = 8,
    methods: Sequence[str] = METHODS,
    options: dict | None = None,
    size: int = 0,
) -> list[MemoryRow]:
    """`options` go to every method that has them (e.g. SNELL's dropout)."""
    rows = []
    for method in methods:
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "adapterbank.benchmarks.train_memory",
                method,
                arch,
                str(batch),
                str(steps),
                str(rank),
                json.dumps(options or {}),
                str(size),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if out.returncode != 0:
            raise RuntimeError(f"{method} measurement failed: {out.stderr.strip().splitlines()[-1:]}")
        rows.append(MemoryRow(**json.loads(out.stdout.strip().splitlines()[-1])))
    return rows


if __name__ == "__main__":
    method_name, arch_name, batch_size, step_count, lora_rank, method_options, image_size = sys.argv[1:8]
    measured = measure_one(
        method_name,
        arch_name,
        int(batch_size),
        int(step_count),
        int(lora_rank),
        json.loads(method_options),
        int(image_size),
    )
    print(json.dumps(measured))
