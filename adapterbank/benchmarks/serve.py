"""Mixed-task serving throughput, side by side in one run (targets: docs/benchmarks.md#targets).

Per method, on one backbone with `tasks` tasks in a bank:
    single  a batch of one task on that task's merged weights (the ceiling: a plain timm model); for methods
            that cannot merge (adapter, prefix, prompt, utuning), on its one-task model with the extra ops
    mixed   the same batch spread over all tasks, through TorchRuntime (per-sample task switching)
    naive   the mixed batch served by switching merged weights per task group (load state, forward the group)
    peft    (LoRA) Hugging Face PEFT's mixed-batch forward with `adapter_names`, on the same timm model
Memory: bytes of distinct tensors a runtime holds with `resident` tasks, against backbone + task tensors; for SNELL,
the merged weights its LRU cache kept under the budget (a budget below the tasks' merged weights makes the mixed
batch recompute them).
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from adapterbank.anatomy import backbone_state
from adapterbank.backbones import adapt_input_size, create_backbone
from adapterbank.bank.torch_bridge import commit, create_bank, load_tasks, task_record
from adapterbank.benchmarks.timing import interleaved_medians
from adapterbank.inspection import perturb_task_parameters
from adapterbank.methods import get_method
from adapterbank.methods.placements import delta_targets
from adapterbank.runtime.torch_runtime import TorchRuntime
from adapterbank.tuned import TunedModel


@dataclass
class ServeRow:
    method: str
    single_ips: float
    mixed_ips: float
    naive_ips: float
    peft_ips: float | None
    cache_bytes: int  # merged weights the runtime kept (SNELL)

    @property
    def mixed_vs_single(self) -> float:
        return self.mixed_ips / self.single_ips


@dataclass
class MemoryRow:
    method: str
    tasks: int
    backbone_bytes: int
    task_bytes: int
    resident_bytes: int

    @property
    def ratio(self) -> float:
        """Resident extra over the task tensors: the target is <= 1.2."""
        return (self.resident_bytes - self.backbone_bytes) / max(self.task_bytes, 1)


def fill_bank(
    folder: Path, backbone: torch.nn.Module, arch: str, method: str, count: int, classes: int, size: int | None = None
) -> list[str]:
    """`count` tasks of `method`, tensors moved off their init; `size`: the image size they were trained at."""
    bank = create_bank(folder, backbone, arch, "random-init")
    training = {"image_size": size} if size else None
    names = []
    for i in range(count):
        model = TunedModel(
            copy.deepcopy(backbone), arch, method, [classes], backbone_fingerprint=bank.identity.fingerprint
        )
        perturb_task_parameters(model, seed=i)
        names.append(f"{method}-{i}")
        commit(bank, task_record(model, names[-1], training=training))
    return names


def _distinct_bytes(runtime: TorchRuntime) -> int:
    seen: dict[int, int] = {}
    for group in runtime.groups.values():
        for t in [*group.model.parameters(), *group.model.buffers()]:
            seen[t.data_ptr()] = t.numel() * t.element_size()
    return sum(seen.values())


def _peft_forward(backbone: torch.nn.Module, count: int, classes: int, rank: int):
    import peft

    model = copy.deepcopy(backbone)  # at the images' size, with the bank's weights
    model.reset_classifier(classes)
    targets = [path for path, _ in delta_targets(model)]  # the modules adapterbank's LoRA tunes, in any family
    config = peft.LoraConfig(r=rank, lora_alpha=rank, target_modules=targets)
    wrapped = peft.get_peft_model(model, config, adapter_name="a0")
    for i in range(1, count):
        wrapped.add_adapter(f"a{i}", config)
    return wrapped.eval()


@torch.no_grad()
def _one_task_model(runtime: TorchRuntime, names: Sequence[str]) -> tuple[torch.nn.Module, dict, Callable]:
    """A one-task model, each task's weights, and how to switch between them: the merged timm model and its whole
    state for methods that merge; else the tuned model with its extra ops and only the task's tensors."""
    models = {n: load_tasks(runtime.bank, [n])[0].eval() for n in names}
    first = models[names[0]]
    if first.method.mergeable:
        merged = {n: m.merge(0) for n, m in models.items()}
        plain = merged[names[0]]
        return plain, {n: m.state_dict() for n, m in merged.items()}, plain.load_state_dict
    return first, {n: m.state(0) for n, m in models.items()}, first.load_state


def serve_benchmark(
    arch: str = "vit_base_patch16_224",
    methods: Sequence[str] = ("ssf", "bitfit", "lora", "snell"),
    tasks: int = 8,
    batch: int = 64,
    rounds: int = 3,
    resident: int = 100,
    classes: int = 10,
    snell_cache_bytes: int = 4 << 30,
    size: int | None = None,
) -> tuple[list[ServeRow], list[MemoryRow]]:
    """`size`: images of that size (ViT/Swin resampled to it); None: the architecture's own input size."""
    torch.manual_seed(0)
    backbone = create_backbone(arch)
    channels, height, width = backbone.pretrained_cfg["input_size"]
    sized = copy.deepcopy(backbone)  # the bank keeps the backbone as created; PEFT's model takes the images' size
    if size:
        adapt_input_size(sized, size)
    x = torch.randn(batch, channels, size or height, size or width)
    rows, memory = [], []
    with tempfile.TemporaryDirectory() as folder:
        for method in methods:
            names = fill_bank(Path(folder) / method, backbone, arch, method, tasks, classes, size)
            bank_path = Path(folder) / method
            runtime = TorchRuntime(bank_path, snell_cache_bytes=snell_cache_bytes)
            mixed = [names[i % tasks] for i in range(batch)]
            plain, states, switch = _one_task_model(runtime, names)
            groups = {n: [i for i, t in enumerate(mixed) if t == n] for n in names}

            def naive(plain=plain, states=states, groups=groups, switch=switch) -> None:
                for name, rows_of in groups.items():
                    switch(states[name])
                    plain(x[rows_of])

            candidates = {
                "single": lambda plain=plain, states=states, first=names[0], switch=switch: (
                    switch(states[first]),
                    plain(x),
                ),
                "mixed": lambda runtime=runtime, mixed=mixed: runtime.predict(x, mixed),
                "naive": naive,
            }
            if method == "lora":
                peft_model = _peft_forward(sized, tasks, classes, 8)
                adapters = [f"a{i % tasks}" for i in range(batch)]
                candidates["peft"] = lambda m=peft_model, a=adapters: m(x, adapter_names=a)
            seconds = interleaved_medians(candidates, rounds, warmup=1)
            rows.append(
                ServeRow(
                    method,
                    batch / seconds["single"],
                    batch / seconds["mixed"],
                    batch / seconds["naive"],
                    batch / seconds["peft"] if "peft" in seconds else None,
                    runtime.cache.bytes,
                )
            )
            tuning = get_method(method)
            if resident and not tuning.trains_backbone and not tuning.caches_derived_weights:  # tensors only
                many = fill_bank(Path(folder) / f"{method}-many", backbone, arch, method, resident, classes, size)
                big = TorchRuntime(Path(folder) / f"{method}-many", preload=many)
                per_task = sum(v.nbytes for v in big.bank.load(many[0]).tensors.values())
                backbone_bytes = sum(t.numel() * t.element_size() for t in backbone_state(big.backbone).values())
                memory.append(MemoryRow(method, resident, backbone_bytes, per_task * resident, _distinct_bytes(big)))
    return rows, memory
