"""A backbone with one method attached for one or many tasks: the object training, export and serving share."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from adapterbank.anatomy import classifier_path, fingerprint, is_convolutional
from adapterbank.backbones import create_backbone
from adapterbank.errors import AdapterBankError
from adapterbank.methods import get_method, make_config
from adapterbank.methods.base import task_modules
from adapterbank.methods.head import TaskHead
from adapterbank.routing import TaskRouter
from adapterbank.weight_specs import resolve_weights


class TunedModel(nn.Module):
    """`model(images, task_ids)`: each sample computed with its own task's parameters.

    `num_classes` has one entry per task; with one task, `task_ids` may be omitted.
    """

    def __init__(
        self,
        backbone: nn.Module,
        arch: str,
        method: str,
        num_classes: Sequence[int],
        options: dict[str, Any] | None = None,
        backbone_fingerprint: str | None = None,
    ) -> None:
        super().__init__()
        # Identity of the frozen weights, taken before the method wraps them (or given by a caller who knows it).
        self.backbone_fingerprint = backbone_fingerprint or fingerprint(backbone, arch)
        self.arch = arch
        self.method = get_method(method)
        self.config = make_config(self.method, options)
        self.num_classes = [int(c) for c in num_classes]
        if not self.num_classes or min(self.num_classes) < 1:
            raise AdapterBankError(f"every task needs at least one class, got {self.num_classes}")
        if len(self.num_classes) > 1 and not self.method.supports_mixed_tasks:
            raise AdapterBankError(f"method {method} owns a whole backbone per task; it cannot hold several tasks")
        self.router = TaskRouter(len(self.num_classes))
        backbone.requires_grad_(False)
        self.head_path = classifier_path(backbone)
        backbone.reset_classifier(1)
        in_features = backbone.get_submodule(self.head_path).in_features
        backbone.set_submodule(self.head_path, TaskHead(in_features, self.num_classes, self.router))
        self.method.attach(backbone, self.config, self.router)
        self.model = backbone
        # a CNN's convolutions run on images stored channels last (NHWC), and the layers after them keep that
        # layout: training and inference 1.2-1.6x faster on CPU (docs/training.md#memory-layout)
        self.channels_last = is_convolutional(backbone)
        self._set_trainable()

    def _set_trainable(self) -> None:
        self.model.requires_grad_(self.method.trains_backbone)
        for _, module in task_modules(self.model):
            for _, p in module.named_parameters(recurse=False):
                p.requires_grad_(True)

    @property
    def num_tasks(self) -> int:
        return len(self.num_classes)

    def forward(self, images: torch.Tensor, task_ids: torch.Tensor | None = None) -> torch.Tensor:
        """A batch whose samples are all of one task runs as that task alone (its slot, no per-row gathers)."""
        task = 0
        if task_ids is not None:
            task_ids = task_ids.to(device=images.device, dtype=torch.long).reshape(-1)
            if task_ids.shape[0] != images.shape[0]:
                raise AdapterBankError(f"{images.shape[0]} images but {task_ids.shape[0]} task ids")
            if not torch.jit.is_tracing() and task_ids.numel():
                low, high = (int(v) for v in task_ids.aminmax())
                if not (low >= 0 and high < self.num_tasks):
                    raise AdapterBankError(f"task ids must be in [0, {self.num_tasks}), got {task_ids.tolist()}")
                if low == high:
                    task_ids, task = None, low
        elif self.num_tasks > 1:
            raise AdapterBankError(f"this model holds {self.num_tasks} tasks: pass task_ids")
        if self.channels_last and not (torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()):
            images = images.contiguous(memory_format=torch.channels_last)
        with self.router.route(task_ids, task):
            return self.model(images)

    def resize_slots(self, keep: Sequence[int], capacity: int, max_classes: int | None = None) -> None:
        """Keep the tasks of slots `keep` as slots 0..len(keep)-1 of `capacity` (the others empty, one class);
        the head's class axis becomes `max_classes` wide (None: unchanged; at least the widest kept task's). A
        runtime's resident groups grow and compact with it."""
        if capacity < max(1, len(keep)) or (capacity > 1 and not self.method.supports_mixed_tasks):
            raise AdapterBankError(f"cannot hold {len(keep)} tasks in {capacity} slots of method {self.method.name}")
        for _, module in task_modules(self.model):
            if isinstance(module, TaskHead):
                module.resize_slots(keep, capacity, max_classes)
            else:
                module.resize_slots(keep, capacity)
        self.num_classes = [self.num_classes[k] for k in keep] + [1] * (capacity - len(keep))
        self.router.num_tasks = capacity

    def set_task_classes(self, task: int, count: int) -> None:
        """Slot `task` now holds a task of `count` classes (the head must be wide enough: resize_slots)."""
        self.model.get_submodule(self.head_path).set_classes(task, count)
        self.num_classes[task] = count

    def max_classes(self) -> int:
        return int(self.model.get_submodule(self.head_path).weight.shape[1])

    def train(self, mode: bool = True) -> TunedModel:
        """Frozen BatchNorm layers keep their running statistics: only `full` updates them."""
        super().train(mode)
        if mode and not self.method.trains_backbone:
            for module in self.model.modules():
                if isinstance(module, _BatchNorm):
                    module.eval()
        return self

    def trainable_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]

    def param_groups(self, weight_decay: float, head_lr: float | None = None) -> list[dict[str, Any]]:
        """AdamW groups as the papers: decay on matrices (SNELL/LoRA factors, head weights), none on vectors
        (SSF scales and shifts, biases); a stacked task tensor counts by its per-task shape. With `head_lr`, the
        head's tensors are groups of their own at that lr (the scheduler scales every group alike)."""
        stacked = {f"{path}.{n}" for path, m in task_modules(self.model) for n, _ in m.named_parameters(recurse=False)}
        head = f"{self.head_path}."
        groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
        for name, p in self.trainable_parameters():
            per_task_ndim = p.ndim - 1 if name in stacked else p.ndim
            own_lr = head_lr is not None and name.startswith(head)
            groups.setdefault((own_lr, per_task_ndim >= 2), []).append(p)
        return [
            {"params": params, "weight_decay": weight_decay if decays else 0.0} | ({"lr": head_lr} if own_lr else {})
            for (own_lr, decays), params in sorted(groups.items(), key=lambda item: (item[0][0], not item[0][1]))
        ]

    def num_trainable(self, include_head: bool = True) -> int:
        """Trainable numbers of task 0 (head included or not); buffers such as BatchNorm statistics excluded."""
        trainable = {name for name, _ in self.trainable_parameters()}
        return sum(
            v.numel()
            for k, v in self.state(0).items()
            if k in trainable and (include_head or not k.startswith(self.head_path + "."))
        )

    def state(self, task: int = 0) -> dict[str, torch.Tensor]:
        """Exactly what the bank stores for `task`: the method's tensors and the head, fp32 masters."""
        return self.method.state(self.model, task)

    def load_state(self, tensors: dict[str, torch.Tensor], task: int = 0) -> None:
        self.method.load_state(self.model, tensors, task)

    def merge(self, task: int = 0, share: bool = False) -> nn.Module:
        """A plain timm model computing `task`: every mergeable tensor folded into the backbone's own weights.
        `share`: layers the method leaves untouched keep this model's tensors instead of copies (for serving)."""
        if not self.method.mergeable:
            raise AdapterBankError(f"method {self.method.name} cannot be merged; export it with its extra ops")
        memo = None
        if share:  # the runtime's tensors, and any cache a module serves through, are shared, never copied
            memo = {id(t): t for t in itertools.chain(self.model.parameters(), self.model.buffers())}
            memo |= {id(m.cache): m.cache for _, m in task_modules(self.model) if getattr(m, "cache", None)}
        return self.method.merge(self.model, task, memo).eval()


def tune(
    arch: str,
    method: str,
    num_classes: int | Sequence[int],
    checkpoint: str | Path | None = None,
    pretrained: bool = False,
    **options: Any,
) -> TunedModel:
    """Create a backbone by timm name and attach `method` to it. `checkpoint` is a weight spec as on the command
    line (a file, 'packaged' or 'none'; adapterbank.weight_specs); without one, random init unless `pretrained`."""
    classes = [num_classes] if isinstance(num_classes, int) else list(num_classes)
    get_method(method)  # refuse an unknown method before building the backbone
    weights = resolve_weights(str(checkpoint), arch).path if checkpoint is not None else None
    backbone = create_backbone(arch, checkpoint=weights, pretrained=pretrained)
    return TunedModel(backbone, arch, method, classes, options)
