"""Serving many tasks on one shared backbone, with batches whose samples switch tasks."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from adapterbank.bank.store import Bank
from adapterbank.errors import AdapterBankError
from adapterbank.runtime.onnx_runtime import ONNXRuntime
from adapterbank.runtime.torch_runtime import TorchRuntime

BACKENDS = ("torch", "onnx")


def open_runtime(
    bank: Bank | str | Path,
    backend: str = "torch",
    snell_cache_bytes: int = 1 << 30,
    task_cache_bytes: int | None = None,
    preload: Sequence[str] = (),
    device: str = "cpu",
) -> TorchRuntime | ONNXRuntime:
    """The runtime every serving path uses (predict, the HTTP service, Ray batch jobs), by backend name."""
    if backend == "torch":
        return TorchRuntime(
            bank,
            device=device,
            snell_cache_bytes=snell_cache_bytes,
            task_cache_bytes=task_cache_bytes,
            preload=preload,
        )
    if backend == "onnx":
        return ONNXRuntime(bank, task_cache_bytes=task_cache_bytes, preload=preload)
    raise AdapterBankError(f"unknown backend '{backend}': choose {' or '.join(BACKENDS)}")


__all__ = ["BACKENDS", "ONNXRuntime", "TorchRuntime", "open_runtime"]
