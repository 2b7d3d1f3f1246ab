"""Per-channel task parameters applied to a frozen module's affine output: SSF's scale and shift, BitFit's bias.

Each task's change is an affine map of the module's output, y -> y * scale + shift, applied in one fused pass
(addcmul, in place at inference). The module's own per-channel affine composes with it: a frozen eval BatchNorm is
x * a + c, so norm and task are one pass over the input, x * (a * scale) + (c * scale + shift); a LayerNorm's weight
and bias, and a Linear's bias, fold the same way, so the mixed batch pays no pass the merged model does not.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.modules.batchnorm import _BatchNorm

from adapterbank.methods.base import TaskModule
from adapterbank.methods.modules import affine_forward, channel_dim, fused_activation
from adapterbank.routing import TaskRouter, broadcast_channels, gather_per_row


class ChannelwiseModule(TaskModule):
    """Wraps a frozen Linear/Conv/norm; subclasses turn its pre-activation output into the task's output."""

    def __init__(self, base: nn.Module, router: TaskRouter) -> None:
        super().__init__(router)
        self.base = base
        self.channel_dim = channel_dim(base)

    def per_channel(self, values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """(tasks, C) -> broadcastable against `like`, per sample when the batch mixes tasks."""
        rows = self.router.rows(like.shape[0])
        per_task = gather_per_row(values, rows, self.router.task)
        return broadcast_channels(per_task, like, self.channel_dim, rows is not None)

    def task_affine(self) -> tuple[torch.Tensor | None, torch.Tensor]:
        """(scale or None, shift), each (tasks, C): how every task changes the frozen module's output."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, scale, shift = self._frozen_part(x)
        shift = self.per_channel(shift, y)
        # in place only at inference (autograd needs y), on our own output (never the caller's x), same dtype
        in_place = y is not x and not torch.is_grad_enabled() and y.dtype == shift.dtype
        if scale is None:
            y = y.add_(shift) if in_place else y + shift
        elif in_place:
            y = torch.addcmul(shift, y, self.per_channel(scale, y), out=y)
        else:
            y = torch.addcmul(shift, y, self.per_channel(scale, y))
        return fused_activation(self.base, y)

    def _frozen_part(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """What of the frozen module runs before the task's affine, and that affine with the module's own
        per-channel affine (BatchNorm statistics, LayerNorm weight, Linear bias) folded in, so that one pass
        applies both: x itself for an eval BatchNorm, the unscaled normalization for LayerNorm, the product
        without bias for Linear."""
        scale, shift = self.task_affine()
        base = self.base
        if isinstance(base, _BatchNorm) and not base.training and base.running_var is not None:
            a = base.weight * torch.rsqrt(base.running_var + base.eps)
            c = base.bias - base.running_mean * a
            return x, *_compose(a, c, scale, shift)
        if isinstance(base, nn.LayerNorm) and self.channel_dim == -1 and base.weight is not None:
            y = F.layer_norm(x, base.normalized_shape, None, None, base.eps)
            return y, *_compose(base.weight, base.bias, scale, shift)
        if isinstance(base, nn.Linear) and base.bias is not None:
            return F.linear(x, base.weight), *_compose(None, base.bias, scale, shift)
        return affine_forward(base, x), scale, shift

    def merged_base(self) -> nn.Module:
        """A detached fp32-exact copy of the frozen module to fold the task into."""
        return copy.deepcopy(self.base)


def _compose(
    a: torch.Tensor | None, c: torch.Tensor | None, scale: torch.Tensor | None, shift: torch.Tensor
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """(y * a + c) * scale + shift as y * a' + c' with a', c' of shape (tasks, C); a = None means 1, c = None 0."""
    c = shift if c is None else (c + shift if scale is None else c * scale + shift)
    if scale is None:
        return (None if a is None else a.expand_as(shift)), c
    return (scale if a is None else a * scale), c


def fold_scale_shift(module: nn.Module, scale: torch.Tensor, shift: torch.Tensor) -> None:
    """module(x) -> scale * module(x) + shift, in place, for any module whose output is W-linear plus bias."""
    weight, bias = module.weight, module.bias
    with torch.no_grad():
        w32 = weight.float()
        view = (-1,) + (1,) * (w32.ndim - 1)
        weight.copy_((w32 * scale.float().reshape(view)).to(weight.dtype))
        bias.copy_((bias.float() * scale.float() + shift.float()).to(bias.dtype))
