"""Serving many tasks on one shared backbone, with batches whose samples switch tasks."""

from adapterbank.runtime.onnx_runtime import ONNXRuntime
from adapterbank.runtime.torch_runtime import TorchRuntime

__all__ = ["ONNXRuntime", "TorchRuntime"]
