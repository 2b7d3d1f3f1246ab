"""Where each method attaches, per backbone family (METHODS.md 1.3, 2.1).

SSF: after every Linear/Conv/LayerNorm of ViT, Swin and ConvNeXt (the released placements); in BatchNorm
networks after every norm layer instead of the conv before it, since a conv without bias cannot absorb a shift.
Deltas (SNELL, LoRA): q, k, v, proj, fc1, fc2 for ViT and Swin (fused qkv split into three matrices);
fc1, fc2 for ConvNeXt; every Linear and 1x1 conv for generic CNNs.
"""

from __future__ import annotations

from torch import nn

from adapterbank.backbones import classifier_path, family_of, is_head_key
from adapterbank.methods.modules import AFFINE_TYPES, NORM_TYPES, has_weight_and_bias, is_pointwise

_TRANSFORMER_DELTAS = {"attn.qkv": 3, "attn.proj": 1, "mlp.fc1": 1, "mlp.fc2": 1}
_CONVNEXT_DELTAS = {"mlp.fc1": 1, "mlp.fc2": 1}


def _body_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    head = classifier_path(model)
    return [(path, m) for path, m in model.named_modules() if path and not is_head_key(path, head)]


def scale_shift_targets(model: nn.Module) -> list[str]:
    body = _body_modules(model)
    has_batchnorm = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for _, m in body)
    kinds = (*NORM_TYPES, nn.Linear) if has_batchnorm else AFFINE_TYPES
    return [path for path, m in body if isinstance(m, kinds) and has_weight_and_bias(m)]


def bias_targets(model: nn.Module) -> list[str]:
    return [
        path
        for path, m in _body_modules(model)
        if isinstance(m, AFFINE_TYPES) and isinstance(getattr(m, "bias", None), nn.Parameter)
    ]


def delta_targets(model: nn.Module) -> list[tuple[str, int]]:
    """(module path, number of separately tuned output blocks) for SNELL and LoRA."""
    family = family_of(model)
    body = _body_modules(model)
    if family == "cnn":
        return [(path, 1) for path, m in body if is_pointwise(m)]
    suffixes = _CONVNEXT_DELTAS if family == "convnext" else _TRANSFORMER_DELTAS
    found = []
    for path, m in body:
        for suffix, splits in suffixes.items():
            if (path == suffix or path.endswith("." + suffix)) and is_pointwise(m):
                found.append((path, splits))
    return found
