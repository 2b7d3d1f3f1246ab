"""Per-channel task parameters applied to a frozen module's affine output: SSF's scale and shift, BitFit's bias.

Each task's change is an affine map of the module's output, y -> y * scale + shift, applied in one fused pass
(addcmul). After a frozen BatchNorm in eval mode (every PEFT method keeps BN statistics frozen) the norm itself is
the per-channel affine x * a + c, so norm and task compose into a single pass over the feature map:
x * (a * scale) + (c * scale + shift), per sample in a mixed batch.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
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
        return broadcast_channels(gather_per_row(values, rows), like, self.channel_dim, rows is not None)

    def task_affine(self) -> tuple[torch.Tensor | None, torch.Tensor]:
        """(scale or None, shift), each (tasks, C): how every task changes the frozen module's output."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale, shift = self.task_affine()
        base = self.base
        if isinstance(base, _BatchNorm) and not base.training and base.running_var is not None:
            a = base.weight * torch.rsqrt(base.running_var + base.eps)
            c = base.bias - base.running_mean * a
            scale, shift = (a.expand_as(shift), c + shift) if scale is None else (a * scale, c * scale + shift)
            y = torch.addcmul(self.per_channel(shift, x), x, self.per_channel(scale, x))
        else:
            y = affine_forward(base, x)
            if scale is None:
                y = y + self.per_channel(shift, y)
            else:
                y = torch.addcmul(self.per_channel(shift, y), y, self.per_channel(scale, y))
        return fused_activation(base, y)

    def merged_base(self) -> nn.Module:
        """A detached fp32-exact copy of the frozen module to fold the task into."""
        return copy.deepcopy(self.base)


def fold_scale_shift(module: nn.Module, scale: torch.Tensor, shift: torch.Tensor) -> None:
    """module(x) -> scale * module(x) + shift, in place, for any module whose output is W-linear plus bias."""
    weight, bias = module.weight, module.bias
    with torch.no_grad():
        w32 = weight.float()
        view = (-1,) + (1,) * (w32.ndim - 1)
        weight.copy_((w32 * scale.float().reshape(view)).to(weight.dtype))
        bias.copy_((bias.float() * scale.float() + shift.float()).to(bias.dtype))
