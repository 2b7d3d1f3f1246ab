"""Where each method attaches, per backbone family (docs/methods.md#placements).

SSF: after every Linear/Conv/LayerNorm of ViT, Swin and ConvNeXt (the released placements); in BatchNorm
networks after every norm layer instead of the conv before it, since a conv without bias cannot absorb a shift.
Deltas (SNELL, LoRA): q, k, v, proj, fc1, fc2 for ViT and Swin (fused qkv split into three matrices);
fc1, fc2 for ConvNeXt; every Linear and 1x1 conv for generic CNNs.
U-Tuning (docs/methods.md#utuning): prefixes and prompts extend the keys and values of every ViT/Swin
self-attention; the parallel adapter sits beside every MLP (ViT, Swin, ConvNeXt) or, in CNNs, every residual block.
"""

from __future__ import annotations

from timm.models.resnet import BasicBlock, Bottleneck
from timm.models.swin_transformer import SwinTransformerBlock
from timm.models.vision_transformer import Block
from torch import nn

from adapterbank.anatomy import classifier_path, family_of, is_head_key
from adapterbank.errors import AdapterBankError
from adapterbank.methods.modules import AFFINE_TYPES, NORM_TYPES, channel_dim, has_weight_and_bias, is_pointwise

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


def attention_targets(model: nn.Module, method: str) -> list[tuple[str, str]]:
    """(attention path, path of the norm feeding it) per pre-norm ViT/Swin block: where prefixes and prompts go."""
    found = [
        (f"{path}.attn", f"{path}.norm1")
        for path, m in _body_modules(model)
        if isinstance(m, (Block, SwinTransformerBlock)) and isinstance(getattr(m.attn, "qkv", None), nn.Linear)
    ]
    if not found:
        raise AdapterBankError(
            f"method {method} extends self-attention: it needs a ViT or Swin backbone, not {type(model).__name__}"
        )
    return found


def parallel_adapter_targets(model: nn.Module) -> list[tuple[str, int, int]]:
    """(path, channels, channel dim) of every module the parallel adapter goes beside; input shape = output shape."""
    found = []
    for path, m in _body_modules(model):
        if path.endswith(".mlp") and hasattr(m, "fc1") and hasattr(m, "fc2"):
            channels = m.fc1.in_channels if isinstance(m.fc1, nn.Conv2d) else m.fc1.in_features
            found.append((path, channels, channel_dim(m.fc1)))
        elif getattr(m, "has_skip", False) or (isinstance(m, (BasicBlock, Bottleneck)) and m.downsample is None):
            found.append((path, _block_channels(m), 1))
    if not found:
        raise AdapterBankError(f"no MLP or residual block in {type(model).__name__} to put a parallel adapter beside")
    return found


def _block_channels(block: nn.Module) -> int:
    """Input channels of a residual CNN block (its first conv)."""
    first = next(m for m in block.modules() if isinstance(m, nn.Conv2d))
    return first.in_channels
