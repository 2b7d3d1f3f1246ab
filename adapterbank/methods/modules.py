"""What the methods need to know about the frozen modules they wrap: channel axis, output size, and where the
affine part of the module ends (timm fuses BatchNorm with its activation; SSF/BitFit must act before it)."""

from __future__ import annotations

import torch
from timm.layers import BatchNormAct2d, LayerNorm2d
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

NORM_TYPES = (nn.LayerNorm, _BatchNorm, nn.GroupNorm)
AFFINE_TYPES = (nn.Linear, nn.Conv2d, *NORM_TYPES)


def channel_dim(module: nn.Module) -> int:
    """1 for NCHW outputs (conv, BN, GN, LayerNorm2d), -1 for channel-last outputs (Linear, LayerNorm)."""
    if isinstance(module, (nn.Conv2d, _BatchNorm, nn.GroupNorm, LayerNorm2d)):
        return 1
    return -1


def out_channels(module: nn.Module) -> int:
    if isinstance(module, nn.Linear):
        return module.out_features
    if isinstance(module, nn.Conv2d):
        return module.out_channels
    if isinstance(module, _BatchNorm):
        return module.num_features
    if isinstance(module, nn.GroupNorm):
        return module.num_channels
    if isinstance(module, nn.LayerNorm):
        return module.normalized_shape[0]
    raise TypeError(f"no channel count for {type(module).__name__}")


def affine_forward(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The module's output before any activation fused into it."""
    if isinstance(module, BatchNormAct2d):
        return nn.BatchNorm2d.forward(module, x)
    return module(x)


def fused_activation(module: nn.Module, y: torch.Tensor) -> torch.Tensor:
    """Apply the activation (and dropout) that `affine_forward` left out."""
    if isinstance(module, BatchNormAct2d):
        return module.act(module.drop(y))
    return y


def has_weight_and_bias(module: nn.Module) -> bool:
    return getattr(module, "weight", None) is not None and getattr(module, "bias", None) is not None


def is_pointwise(module: nn.Module) -> bool:
    """A Linear, or a 1x1 dense Conv2d: both are a matrix product over channels."""
    if isinstance(module, nn.Linear):
        return True
    return (
        isinstance(module, nn.Conv2d)
        and module.kernel_size == (1, 1)
        and module.groups == 1
        and module.stride == (1, 1)
        and module.padding in ((0, 0), "valid")
    )
