"""Parallel adapter (AdaptFormer, Chen et al. 2022; U-Tuning's FFN tuner; docs/methods.md#adapter):
x -> OP(x) + s * W_up GELU(W_down x + b_down) + b_up, beside every MLP (ViT, Swin, ConvNeXt) or residual block (CNN).

W_up starts at zero, so a new task starts as the frozen backbone. The GELU keeps it from merging.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn
from torch.nn import functional as F

from adapterbank.errors import AdapterBankError
from adapterbank.methods.base import Method, MethodConfig, TaskModule
from adapterbank.methods.placements import parallel_adapter_targets
from adapterbank.routing import TaskRouter


@dataclasses.dataclass
class AdapterConfig(MethodConfig):
    dim: int = 8  # bottleneck width: Adapter-8 of SNELL's baseline table (docs/methods.md#adapter)
    scale: float = 0.1  # AdaptFormer's s

    def validate(self) -> None:
        check_positive_int("adapter dim", self.dim)


def check_positive_int(what: str, value: object, allow_zero: bool = False) -> None:
    low = 0 if allow_zero else 1
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise AdapterBankError(f"{what} must be an integer >= {low}, got {value!r}")


class ParallelAdapter(TaskModule):
    """A frozen module (MLP or residual block, output shape = input shape) with a per-task bottleneck beside it."""

    def __init__(self, base: nn.Module, router: TaskRouter, channels: int, channel_dim: int, dim: int, scale: float):
        super().__init__(router)
        self.base = base
        self.channel_dim = channel_dim
        self.scale = scale
        t, bound = router.num_tasks, 1.0 / math.sqrt(channels)  # nn.Linear's default init for W_down
        self.adapter_down = nn.Parameter(torch.empty(t, dim, channels).uniform_(-bound, bound))
        self.adapter_down_bias = nn.Parameter(torch.zeros(t, dim))
        self.adapter_up = nn.Parameter(torch.zeros(t, channels, dim))
        self.adapter_up_bias = nn.Parameter(torch.zeros(t, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.scale * self.branch(x)

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        h = x.movedim(1, -1) if self.channel_dim == 1 else x
        rows = self.router.rows(x.shape[0])
        if rows is None:
            t = self.router.task
            z = F.linear(F.gelu(F.linear(h, self.adapter_down[t], self.adapter_down_bias[t])), self.adapter_up[t])
            z = z + self.adapter_up_bias[t]
        else:
            flat = h.reshape(h.shape[0], -1, h.shape[-1])
            down = self.adapter_down.index_select(0, rows).transpose(1, 2)
            z = torch.baddbmm(self.adapter_down_bias.index_select(0, rows).unsqueeze(1), flat, down)
            up = self.adapter_up.index_select(0, rows).transpose(1, 2)
            z = torch.baddbmm(self.adapter_up_bias.index_select(0, rows).unsqueeze(1), F.gelu(z), up)
            z = z.reshape(h.shape)
        return z.movedim(-1, 1) if self.channel_dim == 1 else z


def attach_adapters(model: nn.Module, router: TaskRouter, dim: int, scale: float) -> None:
    for path, channels, channel_dim in parallel_adapter_targets(model):
        module = ParallelAdapter(model.get_submodule(path), router, channels, channel_dim, dim, scale)
        model.set_submodule(path, module)


class Adapter(Method):
    name = "adapter"
    summary = "parallel bottleneck adapter beside every MLP / residual block (AdaptFormer); keeps its extra ops"
    config_type = AdapterConfig
    mergeable = False

    def attach(self, model: nn.Module, config: AdapterConfig, router: TaskRouter) -> None:
        attach_adapters(model, router, config.dim, config.scale)

    def extra_ops(self, config: AdapterConfig) -> list[str]:
        return [adapter_ops(config.dim)]


def adapter_ops(dim: int) -> str:
    return f"parallel adapter: down {dim}, GELU, up, beside every MLP/residual block"
