"""The global random generators training draws from, captured and put back: for resume points, and so that a
training run leaves its process's generators as it found them."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def rng_state(cuda: bool = True) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Every random generator training draws from: torch (dropout, DropPath), CUDA (unless `cuda` is False: reading
    its generators initializes CUDA), NumPy (timm Mixup), Python."""
    tensors = {"rng/torch": torch.get_rng_state()}
    if cuda and torch.cuda.is_available():
        tensors.update({f"rng/cuda{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    python = random.getstate()
    return tensors, {
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "python": [python[0], list(python[1]), python[2]],
    }


def set_rng_state(tensors: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["rng/torch"])
    cuda = [tensors[k] for k in sorted((k for k in tensors if k.startswith("rng/cuda")), key=lambda k: int(k[8:]))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
