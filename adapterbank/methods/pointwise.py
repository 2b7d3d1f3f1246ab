"""Additive weight deltas on Linear and 1x1 conv layers, with the fused qkv split into separately tuned blocks."""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn import functional as F

from adapterbank.methods.base import TaskModule
from adapterbank.methods.modules import out_channels
from adapterbank.routing import TaskRouter


class PointwiseDelta(TaskModule):
    """y = base(x) + x @ dW_task^T, with dW made of `splits` stacked output blocks (q, k, v for fused qkv)."""

    def __init__(self, base: nn.Module, router: TaskRouter, splits: int) -> None:
        super().__init__(router)
        self.base = base
        self.splits = splits
        self.in_features = base.in_features if isinstance(base, nn.Linear) else base.in_channels
        total_out = out_channels(base)
        if total_out % splits:
            raise ValueError(f"{total_out} outputs do not split into {splits} equal blocks")
        self.block_out = total_out // splits
        self.is_conv = isinstance(base, nn.Conv2d)  # (b, C, H, W) in either memory layout; a Linear: (b, ..., C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        rows = self.router.rows(x.shape[0])
        if self.is_conv:
            return y + self.delta(x.movedim(1, -1), rows).movedim(-1, 1)
        return y + self.delta(x, rows)

    def delta(self, x: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
        """x: (rows, ..., in) channel-last -> (rows, ..., out)."""
        raise NotImplementedError

    def delta_weight(self, task: int) -> torch.Tensor:
        """The task's dense (out, in) weight delta in fp32."""
        raise NotImplementedError

    @torch.no_grad()
    def merged_weight(self, task: int) -> torch.Tensor:
        """W0 + dW_task in the base weight's shape and dtype (summed in fp32)."""
        weight = self.base.weight
        return (weight.float() + self.delta_weight(task).detach().reshape(weight.shape)).to(weight.dtype)

    def merged(self, task: int) -> nn.Module:
        module = copy.deepcopy(self.base)
        with torch.no_grad():
            module.weight.copy_(self.merged_weight(task))
        return module

    def merged_forward(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """The base layer computed with `weight` in place of its own (targets are Linear or 1x1 stride-1 convs)."""
        if self.is_conv:
            return F.conv2d(x, weight, self.base.bias)
        return F.linear(x, weight, self.base.bias)
