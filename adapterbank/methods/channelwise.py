"""Per-channel task parameters applied to a frozen module's affine output: SSF's scale and shift, BitFit's bias."""

from __future__ import annotations

import copy

import torch
from torch import nn

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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fused_activation(self.base, self.adjust(affine_forward(self.base, x)))

    def adjust(self, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

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
