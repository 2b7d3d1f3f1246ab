"""ONNX Runtime sessions on the best usable device, without provider error spam.

onnxruntime-gpu lists CUDA as available even on machines without a GPU; asking for it there prints errors.
So CUDA is requested only when torch can see a CUDA device, and session logging is limited to errors.
"""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort
import torch


def providers() -> list[str]:
    available = ort.get_available_providers()
    if "CUDAExecutionProvider" in available and torch.cuda.is_available():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def session(model: str | Path | bytes, options: ort.SessionOptions | None = None) -> ort.InferenceSession:
    options = options or ort.SessionOptions()
    options.log_severity_level = 3
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, options, providers=providers())
