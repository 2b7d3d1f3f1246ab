"""LoRA (Hu et al. 2022): dW = (alpha / r) * B A per matrix; A kaiming-uniform, B zero (the PEFT init)."""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

from adapterbank.errors import AdapterBankError
from adapterbank.methods.base import Method, MethodConfig
from adapterbank.methods.placements import delta_targets
from adapterbank.methods.pointwise import PointwiseDelta
from adapterbank.routing import TaskRouter


@dataclasses.dataclass
class LoRAConfig(MethodConfig):
    rank: int = 8
    alpha: float | None = None  # scaling alpha / rank; None means alpha = rank (scale 1)
    dropout: float = 0.0

    def validate(self) -> None:
        if not isinstance(self.rank, int) or self.rank < 1:
            raise AdapterBankError(f"LoRA rank must be a positive integer, got {self.rank}")
        if not 0.0 <= self.dropout < 1.0:
            raise AdapterBankError(f"LoRA dropout must be in [0, 1), got {self.dropout}")

    @property
    def scale(self) -> float:
        return (self.alpha if self.alpha is not None else self.rank) / self.rank


class LowRankDelta(PointwiseDelta):
    def __init__(self, base: nn.Module, router: TaskRouter, splits: int, config: LoRAConfig) -> None:
        super().__init__(base, router, splits)
        t, r, n, m = router.num_tasks, config.rank, self.in_features, self.block_out
        bound = 1.0 / math.sqrt(n)  # kaiming_uniform_(a=sqrt(5)) on an (r, n) matrix
        self.lora_A = nn.Parameter(torch.empty(t, splits, r, n).uniform_(-bound, bound))
        self.lora_B = nn.Parameter(torch.zeros(t, splits, m, r))
        self.scale = config.scale
        self.dropout = nn.Dropout(config.dropout) if config.dropout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """y = base(x) + scale * B_t A_t x per sample, as two batched products of which the second accumulates into
        y (in place at inference): no pass over the output besides the base product's own, in either layout."""
        y = self.base(x)
        b = x.shape[0]
        down, up = self._factors(self.router.rows(b), b)
        x = self.dropout(x)
        if self.is_conv and not x.is_contiguous(memory_format=torch.channels_last):
            # (b, C, H, W) stored channels first: products over the channel axis, no layout change
            low = torch.bmm(down, x.reshape(b, self.in_features, -1))
            return _accumulate(y.reshape(b, y.shape[1], -1), up, low).reshape(y.shape)
        # channel-last rows: a Linear's (b, ..., C), or a conv's (b, C, H, W) stored channels last, whose
        # (b, H, W, C) permutation is a view; the sum keeps that layout
        x_last, y_last = (x.permute(0, 2, 3, 1), y.permute(0, 2, 3, 1)) if self.is_conv else (x, y)
        low = torch.bmm(x_last.reshape(b, -1, self.in_features), down.transpose(1, 2))
        out = _accumulate(y_last.reshape(b, -1, y_last.shape[-1]), low, up.transpose(1, 2)).reshape(y_last.shape)
        return out.permute(0, 3, 1, 2) if self.is_conv else out

    def _factors(self, rows: torch.Tensor | None, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Per row: A as (splits * r, in) and scale * B as (out, splits * r), block-diagonal over the splits (q, k, v
        each see only their own r columns)."""
        if rows is None:
            one = slice(self.router.task, self.router.task + 1)
            a, b = self.lora_A[one], self.lora_B[one]
        else:
            tasks, rows = rows.unique(return_inverse=True)
            a, b = self.lora_A.index_select(0, tasks), self.lora_B.index_select(0, tasks)
        t, s, m, r = b.shape
        up = torch.einsum("tsmr,sq->tsmqr", b * self.scale, torch.eye(s, dtype=b.dtype, device=b.device))
        down, up = a.reshape(t, s * r, -1), up.reshape(t, s * m, s * r)
        if rows is None:
            return down.expand(batch, -1, -1), up.expand(batch, -1, -1)
        return down.index_select(0, rows), up.index_select(0, rows)

    def delta_weight(self, task: int) -> torch.Tensor:
        blocks = torch.einsum("smr,srn->smn", self.lora_B[task].float(), self.lora_A[task].float())
        return blocks.reshape(-1, self.in_features) * self.scale


def _accumulate(y3: torch.Tensor, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """y3 + left @ right, in place when no gradient is recorded (inference)."""
    if torch.is_grad_enabled():
        return torch.baddbmm(y3, left, right)
    return y3.baddbmm_(left, right)


class LoRA(Method):
    name = "lora"
    summary = "low-rank weight deltas on q, k, v, proj, fc1, fc2 (Hu et al. 2022); merges into the backbone"
    config_type = LoRAConfig

    def attach(self, model: nn.Module, config: LoRAConfig, router: TaskRouter) -> None:
        for path, splits in delta_targets(model):
            model.set_submodule(path, LowRankDelta(model.get_submodule(path), router, splits, config))
