"""Backbones: timm models created by name (with weights from a local file if given) and sized for a task's images.

What a created model is made of (classifier, frozen tensors, family, fingerprint) is `adapterbank.anatomy`.
"""

from __future__ import annotations

import difflib
import warnings
from pathlib import Path

import timm
import torch
from torch import nn

from adapterbank.anatomy import has_fixed_input_size
from adapterbank.checkpoints import load_checkpoint
from adapterbank.errors import AdapterBankError


def list_backbones(pattern: str = "*") -> list[str]:
    """All timm architectures matching a wildcard pattern."""
    return timm.list_models(pattern)


def check_backbone_name(arch: str) -> None:
    """Refuse an unknown architecture with the closest valid names."""
    base = arch.split(".")[0]
    if timm.is_model(base):
        return
    names = timm.list_models()
    close = [n for n in names if n.startswith(base)][:5] or difflib.get_close_matches(base, names, n=5, cutoff=0.5)
    hint = f"did you mean: {', '.join(close)}? " if close else ""
    raise AdapterBankError(
        f"unknown backbone '{arch}': {hint}({len(names)} timm architectures; list them with "
        f"`adapterbank backbones PATTERN`, e.g. 'vit_*')"
    )


def create_backbone(arch: str, checkpoint: str | Path | None = None, pretrained: bool = False) -> nn.Module:
    """A timm model with its own classifier (replaced per task later), weights from `checkpoint` if given."""
    check_backbone_name(arch)
    try:
        model = timm.create_model(arch, pretrained=pretrained and checkpoint is None)
    except (OSError, RuntimeError) as exc:
        if pretrained:
            raise AdapterBankError(
                f"could not fetch pretrained weights for '{arch}' ({type(exc).__name__}); offline? "
                f"pass --checkpoint FILE with local weights"
            ) from exc
        raise
    if checkpoint is not None:
        load_checkpoint(model, checkpoint)
    model.eval()
    return model


def adapt_input_size(model: nn.Module, size: int) -> None:
    """Make `model` take size x size images as timm does: ViT and Swin resample their position embeddings (Swin
    also its windows and relative position tables) with their own `set_input_size`; other families are left as
    they are. Frozen tensors are replaced, never changed in place, so a model sharing them keeps its own."""
    if not has_fixed_input_size(model) or tuple(model.patch_embed.img_size) == (size, size):
        return
    patch = model.patch_embed.patch_size[0]
    if size % patch:
        raise AdapterBankError(
            f"{type(model).__name__} has {patch} px patches: the image size must be a multiple of {patch}, got {size}"
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # timm's table interpolation warns about tensor layouts, not about results
        model.set_input_size(img_size=(size, size))


def check_input_size(arch: str, size: int) -> None:
    """Refuse an image size the architecture cannot take, before any work: adapted and run on the meta device
    (no weights, no compute)."""
    check_backbone_name(arch)
    with torch.device("meta"):
        model = timm.create_model(arch).eval()
    adapt_input_size(model, size)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model(torch.empty(1, 3, size, size, device="meta"))
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise AdapterBankError(f"{arch} cannot take {size} px images: {first}") from exc
