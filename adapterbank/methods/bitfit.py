"""BitFit (Ben Zaken et al. 2022): tune every existing bias of the backbone, nothing else."""

from __future__ import annotations

import torch
from torch import nn

from adapterbank.methods.base import Method, MethodConfig
from adapterbank.methods.channelwise import ChannelwiseModule
from adapterbank.methods.placements import bias_targets
from adapterbank.routing import TaskRouter


class TaskBias(ChannelwiseModule):
    """The frozen module's output with its bias swapped for the task's: op(x) + (b_task - b_frozen)."""

    def __init__(self, base: nn.Module, router: TaskRouter) -> None:
        super().__init__(base, router)
        frozen = base.bias.detach()
        self.bias = nn.Parameter(frozen.float().clone().unsqueeze(0).repeat(router.num_tasks, 1))

    def task_affine(self) -> tuple[torch.Tensor | None, torch.Tensor]:
        return None, self.bias - self.base.bias.detach()

    def merged(self, task: int) -> nn.Module:
        module = self.merged_base()
        with torch.no_grad():
            module.bias.copy_(self.bias[task].to(module.bias.dtype))
        return module


class BitFit(Method):
    name = "bitfit"
    summary = "tune the backbone's bias terms (Ben Zaken et al. 2022); merges into the backbone"

    def attach(self, model: nn.Module, config: MethodConfig, router: TaskRouter) -> None:
        for path in bias_targets(model):
            model.set_submodule(path, TaskBias(model.get_submodule(path), router))
