"""Per-task classifiers stacked in one module; tasks may have different class counts (padded, masked to -inf)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from adapterbank.methods.base import TaskModule, copy_checked, next_serial
from adapterbank.routing import TaskRouter


class TaskHead(TaskModule):
    """Linear heads for T tasks: weight (T, Cmax, D), bias (T, Cmax); logits past a task's classes are -inf."""

    def __init__(self, in_features: int, num_classes: Sequence[int], router: TaskRouter) -> None:
        super().__init__(router)
        self.num_classes = list(num_classes)
        c_max = max(self.num_classes)
        self.weight = nn.Parameter(torch.zeros(len(self.num_classes), c_max, in_features))
        self.bias = nn.Parameter(torch.zeros(len(self.num_classes), c_max))
        self.register_buffer("valid", self._valid(), persistent=False)
        with torch.no_grad():
            for t, c in enumerate(self.num_classes):
                nn.init.trunc_normal_(self.weight[t, :c], std=0.02)

    def _valid(self) -> torch.Tensor:
        c_max = self.weight.shape[1]
        return torch.arange(c_max)[None, :] < torch.tensor(self.num_classes)[:, None]

    def set_classes(self, task: int, count: int) -> None:
        """Give slot `task` a task of `count` classes (at most the stack's width; see resize_slots)."""
        if not 1 <= count <= self.weight.shape[1]:
            raise ValueError(f"{count} classes do not fit a head stack of {self.weight.shape[1]}")
        self.num_classes[task] = count
        self.valid = self._valid().to(self.valid.device)

    def resize_slots(self, keep: Sequence[int], capacity: int, max_classes: int | None = None) -> None:
        """As TaskModule.resize_slots; the class axis becomes `max_classes` wide (None: as it is). Narrowing drops
        padding only: the caller passes at least the widest kept task's class count."""
        width = max_classes or self.weight.shape[1]  # may narrow: the widest resident task decides
        index = torch.as_tensor(list(keep), dtype=torch.long, device=self.weight.device)
        for name in ("weight", "bias"):
            p = getattr(self, name)
            stacked = p.new_zeros((capacity, width, *p.shape[2:]))
            kept = min(width, p.shape[1])
            stacked[: len(keep), :kept] = p.detach().index_select(0, index)[:, :kept]
            setattr(self, name, nn.Parameter(stacked, requires_grad=p.requires_grad))
        self.num_classes = [self.num_classes[k] for k in keep] + [1] * (capacity - len(keep))
        self.valid = self._valid().to(self.weight.device)
        self.stacks_serial = next_serial()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = self.router.rows(x.shape[0])
        if rows is None:
            task = self.router.task
            c = self.num_classes[task]
            return F.linear(x, self.weight[task, :c], self.bias[task, :c])
        logits = torch.einsum("bd,bcd->bc", x, self.weight.index_select(0, rows)) + self.bias.index_select(0, rows)
        return logits.masked_fill(~self.valid.index_select(0, rows), float("-inf"))

    def task_state(self, task: int) -> dict[str, torch.Tensor]:
        c = self.num_classes[task]
        return {"weight": self.weight[task, :c].detach().clone(), "bias": self.bias[task, :c].detach().clone()}

    def load_task_state(self, task: int, tensors: dict[str, torch.Tensor], prefix: str) -> None:
        c = self.num_classes[task]
        copy_checked(self.weight[task, :c], tensors, prefix + "weight")
        copy_checked(self.bias[task, :c], tensors, prefix + "bias")

    def merged(self, task: int) -> nn.Linear:
        c = self.num_classes[task]
        linear = nn.Linear(self.weight.shape[-1], c)
        with torch.no_grad():
            linear.weight.copy_(self.weight[task, :c])
            linear.bias.copy_(self.bias[task, :c])
        return linear.to(self.weight.device)
