"""Where a training process computes, and in which precision."""

from __future__ import annotations

import contextlib

import torch

from adapterbank.training.distributed import ProcessInfo


def device_for(info: ProcessInfo) -> torch.device:
    """The process's own GPU (by local rank) when there are GPUs, else the CPU."""
    return torch.device(f"cuda:{info.local_rank}") if torch.cuda.is_available() else torch.device("cpu")


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 compute on GPUs that support it; parameters (the fp32 masters the bank stores) stay fp32."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
