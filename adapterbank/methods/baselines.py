"""The two ends of the spectrum the papers compare against: a linear probe and full fine-tuning."""

from __future__ import annotations

import torch
from torch import nn

from adapterbank.methods.base import Method, copy_checked, task_modules


class Linear(Method):
    name = "linear"
    summary = "train only the task head on frozen features (linear probe)"


class Full(Method):
    """Every backbone weight trains, so a task owns a whole backbone (and its BatchNorm statistics)."""

    name = "full"
    summary = "fine-tune every backbone weight (baseline); a task stores a whole backbone"
    supports_mixed_tasks = False
    trains_backbone = True
    multi_task_graph = False

    @staticmethod
    def _body(model: nn.Module) -> dict[str, torch.Tensor]:
        heads = tuple(path + "." for path, _ in task_modules(model))
        return {
            k: v
            for k, v in model.state_dict().items()
            if not k.startswith(heads) and not k.endswith("num_batches_tracked")
        }

    def state(self, model: nn.Module, task: int) -> dict[str, torch.Tensor]:
        body = {k: v.detach().clone() for k, v in self._body(model).items()}
        return {**body, **super().state(model, task)}

    def load_state(self, model: nn.Module, tensors: dict[str, torch.Tensor], task: int) -> None:
        body = self._body(model)
        for key, destination in body.items():
            copy_checked(destination, tensors, key)
        super().load_state(model, {k: v for k, v in tensors.items() if k not in body}, task)
