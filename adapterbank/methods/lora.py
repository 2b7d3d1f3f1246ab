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

    def delta(self, x: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
        x = self.dropout(x)
        if rows is None:
            low = torch.einsum("...n,srn->...sr", x, self.lora_A[0])
            out = torch.einsum("...sr,smr->...sm", low, self.lora_B[0])
        else:
            flat = x.reshape(x.shape[0], -1, x.shape[-1])
            low = torch.einsum("bln,bsrn->blsr", flat, self.lora_A.index_select(0, rows))
            out = torch.einsum("blsr,bsmr->blsm", low, self.lora_B.index_select(0, rows))
            out = out.reshape(*x.shape[:-1], self.splits, self.block_out)
        return out.flatten(-2) * self.scale

    def delta_weight(self, task: int) -> torch.Tensor:
        blocks = torch.einsum("smr,srn->smn", self.lora_B[task].float(), self.lora_A[task].float())
        return blocks.reshape(-1, self.in_features) * self.scale


class LoRA(Method):
    name = "lora"
    summary = "low-rank weight deltas on q, k, v, proj, fc1, fc2 (Hu et al. 2022); merges into the backbone"
    config_type = LoRAConfig

    def attach(self, model: nn.Module, config: LoRAConfig, router: TaskRouter) -> None:
        for path, splits in delta_targets(model):
            model.set_submodule(path, LowRankDelta(model.get_submodule(path), router, splits, config))
