"""The method protocol: what every tuning method provides, and the stacked-per-task module they all build on."""

from __future__ import annotations

import copy
import dataclasses
import itertools
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from adapterbank.errors import AdapterBankError
from adapterbank.methods.weight_cache import WeightCache
from adapterbank.routing import TaskRouter

_SERIALS = itertools.count()


def next_serial() -> int:
    """A number never handed out before in this process (unlike id() of a freed module): names a set of stacks."""
    return next(_SERIALS)


class TaskModule(nn.Module):
    """A module whose own parameters are stacked along a leading task axis, so one instance serves many tasks.

    Subclasses wrap a frozen `base` module (if any) and implement `merged(task)`.
    """

    def __init__(self, router: TaskRouter) -> None:
        super().__init__()
        object.__setattr__(self, "router", router)  # shared, not a submodule
        self.stacks_serial = next_serial()  # changes whenever the stacks are replaced (see resize_slots)

    @property
    def num_tasks(self) -> int:
        return self.router.num_tasks

    def task_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        return self.named_parameters(recurse=False)

    def task_state(self, task: int) -> dict[str, torch.Tensor]:
        return {name: p[task].detach().clone() for name, p in self.task_parameters()}

    def load_task_state(self, task: int, tensors: dict[str, torch.Tensor], prefix: str) -> None:
        for name, p in self.task_parameters():
            copy_checked(p[task], tensors, prefix + name)

    def resize_slots(self, keep: Sequence[int], capacity: int) -> None:
        """Keep the tasks of slots `keep` (they become slots 0..len(keep)-1) in stacks of `capacity` slots; the
        rest of the new slots are zeros. How a runtime grows and compacts a group of resident tasks in place."""
        index = torch.as_tensor(list(keep), dtype=torch.long)
        for name, p in list(self.task_parameters()):
            stacked = p.new_zeros((capacity, *p.shape[1:]))
            stacked[: len(keep)] = p.detach().index_select(0, index.to(p.device))
            setattr(self, name, nn.Parameter(stacked, requires_grad=p.requires_grad))
        self.stacks_serial = next_serial()  # new tensors restart their version counters: caches must not match

    def merged(self, task: int) -> nn.Module:
        """A plain module equal to this one for `task`, computed from the fp32 masters."""
        raise NotImplementedError(f"{type(self).__name__} cannot be merged")

    def use_weight_cache(self, cache: WeightCache) -> None:
        """Serve through a runtime's cache of derived weights; only modules that derive weights keep it."""


@dataclasses.dataclass
class MethodConfig:
    """Base of every method's configuration; fields are the method's hyper-parameters with paper defaults."""

    def validate(self) -> None:
        """Refuse values the method cannot work with (AdapterBankError, one line)."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class Method:
    """A parameter-efficient tuning method: `attach` inserts its modules; state/load_state/merge are generic
    over TaskModules, so a method only says where its modules go and how each one merges."""

    name: ClassVar[str]
    summary: ClassVar[str]
    config_type: ClassVar[type[MethodConfig]] = MethodConfig
    mergeable: ClassVar[bool] = True
    supports_mixed_tasks: ClassVar[bool] = True
    trains_backbone: ClassVar[bool] = False  # a task owns a whole backbone: served alone, on its own copy
    multi_task_graph: ClassVar[bool] = True  # one ONNX graph can gather this method's tensors per sample (task_id)
    caches_derived_weights: ClassVar[bool] = False  # serving keeps weights derived from its tensors (WeightCache)

    def attach(self, model: nn.Module, config: MethodConfig, router: TaskRouter) -> None:
        """Wrap the modules this method tunes (the classifier is handled by the caller)."""

    def state(self, model: nn.Module, task: int) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for path, module in task_modules(model):
            out.update({f"{path}.{k}": v for k, v in module.task_state(task).items()})
        return out

    def load_state(self, model: nn.Module, tensors: dict[str, torch.Tensor], task: int) -> None:
        expected = set()
        for path, module in task_modules(model):
            module.load_task_state(task, tensors, f"{path}.")
            expected.update(f"{path}.{k}" for k in module.task_state(task))
        extra = sorted(set(tensors) - expected)
        if extra:
            raise AdapterBankError(f"unexpected tensor '{extra[0]}' for method {self.name}")

    def extra_ops(self, config: MethodConfig) -> list[str]:
        """What an unmerged export computes beyond the backbone's own ops (named in the export manifest)."""
        return []

    def merge(self, model: nn.Module, task: int, memo: dict[int, object] | None = None) -> nn.Module:
        """`memo` (as copy.deepcopy's): tensors the merged copy may share instead of copying."""
        merged = copy.deepcopy(model, memo if memo is not None else {})
        for path, module in task_modules(merged):
            merged.set_submodule(path, module.merged(task))
        return merged


def copy_checked(destination: torch.Tensor, tensors: dict[str, torch.Tensor], key: str) -> None:
    """Copy tensors[key] into `destination`, refusing a missing or mis-shaped tensor by name."""
    value = tensors.get(key)
    if value is None:
        raise AdapterBankError(f"missing tensor '{key}'")
    if tuple(value.shape) != tuple(destination.shape):
        raise AdapterBankError(f"tensor '{key}' has shape {tuple(value.shape)}, expected {tuple(destination.shape)}")
    with torch.no_grad():
        destination.copy_(value.to(destination.dtype))


def task_modules(model: nn.Module) -> list[tuple[str, TaskModule]]:
    return [(path, m) for path, m in model.named_modules() if isinstance(m, TaskModule)]
