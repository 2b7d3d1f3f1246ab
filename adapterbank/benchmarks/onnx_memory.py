"""Memory of ONNX Runtime serving N tasks: one isolated session per task graph against ONNXRuntime (one multi-task
graph per group of SSF/BitFit/LoRA/adapter-family tasks; per-task SNELL/full graphs sharing identical initializers).

Each side is measured in a fresh process as the growth of its resident set while the sessions are created.

    python -m adapterbank.benchmarks.onnx_memory isolated|runtime|shared PATH   (one measurement, prints MiB)
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from adapterbank.backbones import create_backbone
from adapterbank.bank.store import Bank
from adapterbank.benchmarks.serve import fill_bank
from adapterbank.export import export_task
from adapterbank.ort_sessions import session
from adapterbank.runtime.onnx_runtime import ONNXRuntime

KINDS = ("isolated", "runtime", "shared")


@dataclass
class OnnxMemoryRow:
    method: str
    tasks: int
    isolated_mib: float
    runtime_mib: float
    shared_mib: float  # ONNXRuntime with share_initializers=True


def _resident_mib() -> float:
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def measure_one(kind: str, path: Path) -> float:
    """Resident growth while one side's sessions are created (imports done before)."""
    before = _resident_mib()
    if kind == "isolated":
        held: list = [session(graph) for graph in sorted(path.glob("*.onnx"))]
    else:
        held = [ONNXRuntime(path, share_initializers=kind == "shared", preload=Bank(path).tasks())]
    grown = _resident_mib() - before
    del held
    return grown


def _measure(kind: str, path: Path) -> float:
    out = subprocess.run(
        [sys.executable, "-m", "adapterbank.benchmarks.onnx_memory", kind, str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"{kind} measurement failed: {out.stderr.strip().splitlines()[-1:]}")
    return float(out.stdout.strip().splitlines()[-1])


def onnx_memory(arch: str, methods: Sequence[str], tasks: int, classes: int = 10) -> list[OnnxMemoryRow]:
    torch.manual_seed(0)
    backbone = create_backbone(arch)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for method in methods:
            bank_path, graphs = Path(folder) / method, Path(folder) / f"{method}-graphs"
            names = fill_bank(bank_path, backbone, arch, method, tasks, classes)
            bank = Bank(bank_path)
            for name in names:
                export_task(bank, name, graphs).manifest.unlink()
            ONNXRuntime(bank, preload=names)  # builds the graph cache, so the measured process only loads
            measured = [_measure(kind, graphs if kind == "isolated" else bank_path) for kind in KINDS]
            rows.append(OnnxMemoryRow(method, tasks, *measured))
    return rows


if __name__ == "__main__":
    print(measure_one(sys.argv[1], Path(sys.argv[2])))
