"""`bench scale`: what a bank and its runtimes cost as the number of stored tasks grows (100, 1,000, 10,000).

One bank per method is filled in steps (the tasks of the smaller size are the first tasks of the larger one), and at
each size, side by side: commit time per task, `bank ls` (the command, in a process of its own), runtime start,
first request of a cold task (a batch of 8 hot tasks with one replaced by a task never served before, against the
same batch all hot), steady mixed throughput over 8 hot tasks against one task alone, reload() after one commit,
and memory (the runtime's task stacks against the resident tasks' own tensors; and, in a fresh process serving 64
tasks spread over the bank, its resident growth against backbone + those tasks' tensors).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from adapterbank import TunedModel, create_backbone
from adapterbank.allocator import trim_freed_memory
from adapterbank.bank.store import Bank
from adapterbank.bank.torch_bridge import create_bank, expected_shapes, task_record
from adapterbank.benchmarks.timing import interleaved_medians
from adapterbank.inspection import perturb_task_parameters
from adapterbank.runtime import TorchRuntime

HOT = 8
COLD_SAMPLES = 5


@dataclass
class MemoryRow:
    """A fresh process holding 8 tasks, then RESIDENT more: the growth of its resident set against the added
    tasks' tensors (the backbone and the runtime's fixed cost are in the first step, measured apart). Growing the
    stacks frees their old copies, which glibc keeps in the heap (a serving process reuses it for activations), so
    the growth is shown as the process holds it and as live memory after malloc_trim."""

    resident_tasks: int
    opened_mib: float  # resident growth from before the runtime to 8 tasks held (backbone, imports, models)
    added_mib: float  # resident growth while RESIDENT more tasks joined
    live_mib: float  # the same once the heap handed its free memory back (malloc_trim): what is in use
    tensors_mib: float  # those tasks' tensors

    @property
    def ratio(self) -> float:
        return self.live_mib / self.tensors_mib


RESIDENT = 512


@dataclass
class ScaleRow:
    method: str
    tasks: int
    commit_ms: float  # mean per task over the commits that grew the bank to this size
    ls_s: float  # `adapterbank bank ls --json` as a command
    start_s: float  # TorchRuntime(bank) until it can serve
    cold_ms: float  # extra latency of a batch holding one never-served task (median of COLD_SAMPLES)
    mixed_ips: float  # images/s, batch of 64 over 8 hot tasks
    single_ips: float  # images/s, batch of 64 of one task
    reload_ms: float  # reload() after one commit of a resident task
    stack_ratio: float  # the runtime's task stacks / the resident tasks' tensors
    memory: MemoryRow


def _rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _fill(bank: Bank, template: TunedModel, start: int, stop: int, rng: np.random.Generator) -> float:
    """Commit tasks start..stop-1 (the template's tensors, each perturbed); returns seconds per commit."""
    base = task_record(template, "template")
    shapes = expected_shapes(bank.identity, base)
    seconds = 0.0
    for i in range(start, stop):
        tensors = {k: v + rng.standard_normal(v.shape, dtype=np.float32) * 0.01 for k, v in base.tensors.items()}
        record = dataclasses.replace(base, name=f"t{i:05d}", tensors=tensors, shapes={})
        began = time.perf_counter()
        bank.commit(record, shapes)
        seconds += time.perf_counter() - began
    return seconds / max(stop - start, 1)


def _ls_seconds(bank: Bank) -> float:
    runs = []
    for _ in range(3):
        began = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "cli", "bank", "ls", "--json", "--bank", str(bank.path)],
            check=True, capture_output=True, cwd=Path(__file__).resolve().parents[2],
        )  # fmt: skip
        runs.append(time.perf_counter() - began)
    return min(runs)


def measure_memory(bank: Bank, tasks: int) -> MemoryRow:
    """In this (fresh) process: open a runtime with the 8 hot tasks, then make up to RESIDENT more tasks spread
    over the bank resident (what a runtime holds between batches; a batch's activations and SNELL's merged-weight
    cache come on top)."""
    before = _rss_mib()
    runtime = TorchRuntime(bank, preload=[f"t{i:05d}" for i in range(HOT)])
    trim_freed_memory()  # what opening left free in the heap is not the added tasks'
    opened = _rss_mib()
    count = min(RESIDENT, tasks - HOT)
    names = [f"t{HOT + i * (tasks - HOT) // count:05d}" for i in range(count)]
    runtime.prepare(names)
    added = _rss_mib() - opened
    trim_freed_memory()
    live = _rss_mib() - opened
    tensors = sum(a.nbytes for n in names for a in bank.load(n).tensors.values())
    return MemoryRow(len(names), opened - before, added, live, tensors / 2**20)


def _memory_in_fresh_process(bank: Bank, tasks: int) -> MemoryRow:
    out = subprocess.run(
        [sys.executable, "-m", "adapterbank.benchmarks.scale", str(bank.path), str(tasks)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return MemoryRow(**json.loads(out.stdout.strip().splitlines()[-1]))


def _measure(bank: Bank, method: str, tasks: int, commit_ms: float, x: torch.Tensor) -> ScaleRow:
    names = [f"t{i:05d}" for i in range(tasks)]
    began = time.perf_counter()
    runtime = TorchRuntime(bank)
    start_s = time.perf_counter() - began
    hot = names[:HOT]
    mixed = [hot[i % HOT] for i in range(len(x))]
    runtime.predict(x[:HOT], hot)  # the hot tasks resident
    cold = []
    for j in range(COLD_SAMPLES):
        batch = [names[tasks // 2 + j * (tasks // (2 * COLD_SAMPLES))], *hot[1:]]
        warm = time.perf_counter()
        runtime.predict(x[:HOT], hot)
        warm = time.perf_counter() - warm
        began = time.perf_counter()
        runtime.predict(x[:HOT], batch)
        cold.append((time.perf_counter() - began - warm) * 1e3)
        runtime.resident.drop(batch[0])  # the next sample finds the same resident set
    seconds = interleaved_medians(
        {"mixed": lambda: runtime.predict(x, mixed), "single": lambda: runtime.predict(x, [hot[0]] * len(x))},
        rounds=3,
        warmup=1,
    )
    record = bank.load(hot[0])
    bank.commit(record, record.shapes)
    began = time.perf_counter()
    runtime.reload()
    reload_ms = (time.perf_counter() - began) * 1e3
    runtime.predict(x[:HOT], hot)
    tensors = sum(a.nbytes for n in runtime.resident.tasks for a in bank.load(n).tensors.values())
    stacks = sum(group.held_bytes() for group in runtime.groups.values())
    return ScaleRow(
        method, tasks, commit_ms, _ls_seconds(bank), start_s, statistics.median(cold), len(x) / seconds["mixed"],
        len(x) / seconds["single"], reload_ms, stacks / tensors, _memory_in_fresh_process(bank, tasks),
    )  # fmt: skip


def scale_benchmark(
    arch: str = "tf_efficientnet_lite0",
    methods: Sequence[str] = ("ssf", "lora"),
    sizes: Sequence[int] = (100, 1000, 10000),
    batch: int = 64,
    classes: int = 10,
    largest: dict[str, int] | None = None,
    folder: Path | None = None,
) -> list[ScaleRow]:
    """`largest`: per method, the largest size measured (e.g. {'snell': 1000}); `folder`: where banks are built
    (a temporary folder by default; 10,000 LoRA tasks on EfficientNet-Lite0 take 8 GB)."""
    torch.manual_seed(0)
    backbone = create_backbone(arch)
    x = torch.randn(batch, *backbone.pretrained_cfg["input_size"])
    rows = []
    with tempfile.TemporaryDirectory(dir=folder) as scratch:
        for method in methods:
            bank = create_bank(Path(scratch) / method, backbone, arch, "random-init")
            template = TunedModel(
                copy.deepcopy(backbone), arch, method, [classes], backbone_fingerprint=bank.identity.fingerprint
            )
            perturb_task_parameters(template, seed=1)
            rng, filled = np.random.default_rng(0), 0
            for size in sorted(sizes):
                if largest and size > largest.get(method, size):
                    continue
                commit_ms = _fill(bank, template, filled, size, rng) * 1e3
                filled = size
                rows.append(_measure(bank, method, size, commit_ms, x))
            del template
    return rows


if __name__ == "__main__":
    print(json.dumps(dataclasses.asdict(measure_memory(Bank(sys.argv[1]), int(sys.argv[2])))))
