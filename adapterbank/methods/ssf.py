"""SSF (Lian et al., NeurIPS 2022): y = gamma * op(x) + beta after every Linear/Conv/norm (docs/methods.md#ssf)."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from adapterbank.methods.base import Method, MethodConfig
from adapterbank.methods.channelwise import ChannelwiseModule, fold_scale_shift
from adapterbank.methods.modules import out_channels
from adapterbank.methods.placements import scale_shift_targets
from adapterbank.routing import TaskRouter


@dataclasses.dataclass
class SSFConfig(MethodConfig):
    init_std: float = 0.02  # gamma ~ N(1, std^2), beta ~ N(0, std^2), as init_ssf_scale_shift


class ScaleShift(ChannelwiseModule):
    def __init__(self, base: nn.Module, router: TaskRouter, init_std: float) -> None:
        super().__init__(base, router)
        c = out_channels(base)
        self.ssf_scale = nn.Parameter(torch.empty(router.num_tasks, c).normal_(1.0, init_std))
        self.ssf_shift = nn.Parameter(torch.empty(router.num_tasks, c).normal_(0.0, init_std))

    def task_affine(self) -> tuple[torch.Tensor | None, torch.Tensor]:
        return self.ssf_scale, self.ssf_shift

    def merged(self, task: int) -> nn.Module:
        module = self.merged_base()
        fold_scale_shift(module, self.ssf_scale[task].detach(), self.ssf_shift[task].detach())
        return module


class SSF(Method):
    name = "ssf"
    summary = "scale and shift after every linear/conv/norm op (Lian et al. 2022); merges into the backbone"
    config_type = SSFConfig

    def attach(self, model: nn.Module, config: SSFConfig, router: TaskRouter) -> None:
        for path in scale_shift_targets(model):
            model.set_submodule(path, ScaleShift(model.get_submodule(path), router, config.init_std))
