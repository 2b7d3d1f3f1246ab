"""Backbones: timm models created by name, their family, classifier location and a fingerprint of frozen weights."""

from __future__ import annotations

import difflib
import hashlib
import warnings
from pathlib import Path
from typing import Literal

import timm
import torch
from torch import nn

from adapterbank.errors import AdapterBankError

Family = Literal["vit", "swin", "convnext", "cnn"]

_FAMILY_BY_CLASS: dict[str, Family] = {
    "VisionTransformer": "vit",
    "SwinTransformer": "swin",
    "ConvNeXt": "convnext",
}


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
        from adapterbank.checkpoints import load_checkpoint

        load_checkpoint(model, checkpoint)
    model.eval()
    return model


def family_of(model: nn.Module) -> Family:
    """The method placement family: ViT, Swin, ConvNeXt, or any other network treated as a generic CNN."""
    for cls in type(model).__mro__:
        if cls.__name__ in _FAMILY_BY_CLASS:
            return _FAMILY_BY_CLASS[cls.__name__]
    return "cnn"


FIXED_SIZE_FAMILIES: tuple[Family, ...] = ("vit", "swin")  # position embeddings / windows tied to the input size


def has_fixed_input_size(model: nn.Module) -> bool:
    """Whether the backbone's weights are tied to one input size (then tasks of other sizes need their own copy of
    the size-dependent tensors; CNNs and ConvNeXt take any size as they are)."""
    return family_of(model) in FIXED_SIZE_FAMILIES


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


def classifier_path(model: nn.Module) -> str:
    """Dotted path of the classifier module (e.g. 'head', 'head.fc', 'classifier')."""
    path = model.pretrained_cfg.get("classifier") if hasattr(model, "pretrained_cfg") else None
    if not path:
        raise AdapterBankError(f"cannot find the classifier of {type(model).__name__}; not a timm classifier model")
    return path


def is_head_key(key: str, head: str) -> bool:
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
