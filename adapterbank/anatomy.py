"""Model anatomy: where a timm model keeps its classifier, which tensors are its frozen backbone, which placement
family it belongs to, and a fingerprint of its weights.

Both creating models (`backbones`) and reading weight files (`checkpoints`) need these facts, so they live here,
depending on neither.
"""

from __future__ import annotations

import hashlib
from typing import Literal

import torch
from torch import nn

from adapterbank.errors import AdapterBankError

Family = Literal["vit", "swin", "convnext", "cnn"]

_FAMILY_BY_CLASS: dict[str, Family] = {
    "VisionTransformer": "vit",
    "SwinTransformer": "swin",
    "ConvNeXt": "convnext",
}

FIXED_SIZE_FAMILIES: tuple[Family, ...] = ("vit", "swin")  # position embeddings / windows tied to the input size


def family_of(model: nn.Module) -> Family:
    """The method placement family: ViT, Swin, ConvNeXt, or any other network treated as a generic CNN."""
    for cls in type(model).__mro__:
        if cls.__name__ in _FAMILY_BY_CLASS:
            return _FAMILY_BY_CLASS[cls.__name__]
    return "cnn"


def is_convolutional(model: nn.Module) -> bool:
    """A generic CNN: convolutions throughout, which run faster on channels-last images. ConvNeXt's blocks already
    compute channel-last (no gain measured), and a transformer outside the named families (EVA, BEiT, a Mixer)
    has one convolution, its patch embedding."""
    return family_of(model) == "cnn" and sum(isinstance(m, nn.Conv2d) for m in model.modules()) > 1


def has_fixed_input_size(model: nn.Module) -> bool:
    """Whether the backbone's weights are tied to one input size (then tasks of other sizes need their own copy of
    the size-dependent tensors; CNNs and ConvNeXt take any size as they are)."""
    return family_of(model) in FIXED_SIZE_FAMILIES


def classifier_path(model: nn.Module) -> str:
    """Dotted path of the classifier module (e.g. 'head', 'head.fc', 'classifier')."""
    path = model.pretrained_cfg.get("classifier") if hasattr(model, "pretrained_cfg") else None
    if not path:
        raise AdapterBankError(f"cannot find the classifier of {type(model).__name__}; not a timm classifier model")
    return path


def is_head_key(key: str, head: str) -> bool:
    """Whether a state-dict key belongs to the classifier at `head` (replaced per task, never part of the backbone)."""
    return key == head or key.startswith(head + ".")


def backbone_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The backbone's own weights: everything but the classifier and BatchNorm step counters."""
    head = classifier_path(model)
    return {
        k: v
        for k, v in model.state_dict().items()
        if not is_head_key(k, head) and not k.endswith("num_batches_tracked")
    }


def fingerprint(model: nn.Module, arch: str) -> str:
    """sha256 over the architecture name and every frozen backbone tensor (name, dtype, shape, bytes)."""
    digest = hashlib.sha256(arch.encode())
    for name, tensor in sorted(backbone_state(model).items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()
