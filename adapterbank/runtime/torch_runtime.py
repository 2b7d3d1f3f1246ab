"""PyTorch runtime: tasks of a bank loaded on first request onto one frozen backbone; `predict(images, tasks)`.

Resident tasks are grouped by (method, config, image size); each group is one TunedModel whose frozen weights are
the very tensors of the shared backbone (no copies) and whose task tensors are stacked in slots, so memory is one
backbone plus the resident tasks' tensors. A group grows by about 2% when full and is compacted when more than 5%
of its slots are free, in place (the stacks are resized; the model is not rebuilt). On ViT and Swin, tasks trained
at another image size form groups of their own, with position embeddings resampled to it (timm set_input_size).
A mixed batch is split by group only; inside a group each sample uses its own task (per-sample gathers for SSF,
BitFit, LoRA and heads; SNELL per task group through its merged weights W0 + dW, kept in an LRU cache under a
byte budget). `full` tasks own a whole backbone each. Which tasks are resident: `resident.ResidentSet`.
"""

from __future__ import annotations

import copy
import itertools
import json
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from adapterbank.anatomy import has_fixed_input_size
from adapterbank.backbones import adapt_input_size
from adapterbank.bank.store import Bank, TaskRecord
from adapterbank.bank.torch_bridge import load_backbone, load_record
from adapterbank.data.preprocessing import task_preprocessing
from adapterbank.errors import AdapterBankError
from adapterbank.methods import get_method
from adapterbank.methods.base import task_modules
from adapterbank.methods.weight_cache import WeightCache
from adapterbank.runtime.resident import ResidentSet, ResidentTask
from adapterbank.tuned import TunedModel

GROWTH = 50  # a full group grows by 1 slot per 50 held (2%)
SLACK = 20  # a group with more than 1 free slot per 20 (5%) is compacted


def share_frozen(backbone: nn.Module) -> nn.Module:
    """A module tree of its own whose parameters and buffers are the backbone's tensors themselves."""
    memo = {id(t): t for t in itertools.chain(backbone.parameters(), backbone.buffers())}
    return copy.deepcopy(backbone, memo)


class SlotGroup:
    """Resident tasks of one kind in the stacked slots of one TunedModel."""

    def __init__(self, model: TunedModel) -> None:
        self.model = model
        self.owners: list[str | None] = [None] * model.num_tasks
        self.slots: dict[str, int] = {}

    def task_bytes(self) -> int:
        """Bytes of the task stacks (for a `full` task: its whole model)."""
        if self.model.method.trains_backbone:
            tensors = itertools.chain(self.model.parameters(), self.model.buffers())
        else:
            tensors = (p for _, m in task_modules(self.model.model) for _, p in m.named_parameters(recurse=False))
        return sum(t.numel() * t.element_size() for t in tensors)

    def add(self, record: TaskRecord) -> int:
        """Load `record` into a free slot (growing the stacks if none is free or its head is too narrow)."""
        classes = len(record.class_names)
        free = next((i for i, owner in enumerate(self.owners) if owner is None), None)
        if free is None or classes > self.model.max_classes():
            held = len(self.slots)
            self._resize(held + 1 + held // GROWTH, max_classes=classes)
            free = held
        self.model.set_task_classes(free, classes)
        load_record(self.model, record, free)
        self.owners[free] = record.name
        self.slots[record.name] = free
        return self.task_bytes() // len(self.owners)

    def remove(self, name: str) -> None:
        self.owners[self.slots.pop(name)] = None

    def compact(self) -> None:
        if self.slots and len(self.owners) - len(self.slots) > len(self.owners) // SLACK:
            self._resize(len(self.slots))

    def _resize(self, capacity: int, max_classes: int = 1) -> None:
        keep = sorted(self.slots.values())
        self.model.resize_slots(keep, capacity, max_classes)
        renumbered = {old: new for new, old in enumerate(keep)}
        self.slots = {name: renumbered[slot] for name, slot in self.slots.items()}
        self.owners = [None] * capacity
        for name, slot in self.slots.items():
            self.owners[slot] = name


class TorchRuntime:
    def __init__(
        self,
        bank: str | Path | Bank,
        tasks: Sequence[str] | None = None,
        device: str | torch.device = "cpu",
        snell_cache_bytes: int = 1 << 30,
        task_cache_bytes: int | None = None,
        preload: Sequence[str] = (),
    ) -> None:
        """`tasks`: serve only these (loaded now; a missing one is an error). `task_cache_bytes`: the resident
        tasks' tensors stay under it (None: no limit). `preload`: hot tasks loaded now (bad ones in `broken`)."""
        self.bank = bank if isinstance(bank, Bank) else Bank(bank)
        self.device = torch.device(device)
        self.backbone = load_backbone(self.bank).to(self.device)
        self.fixed_size = has_fixed_input_size(self.backbone)
        self.cache = WeightCache(snell_cache_bytes)
        self.groups: dict[str, SlotGroup] = {}
        only = frozenset(tasks) if tasks is not None else None
        self.resident: ResidentSet[SlotGroup] = ResidentSet(self.bank, self._place, self._evict, task_cache_bytes, only)
        if tasks is not None:
            missing = [name for name in tasks if name not in self.bank.tasks()]
            if missing:
                raise AdapterBankError(f"no task '{missing[0]}' in bank '{self.bank.path}'")
        self.broken = self.prepare([*(tasks or ()), *preload])

    # ---- which tasks are held ---------------------------------------------------------------------------------

    def prepare(self, names: Sequence[str]) -> dict[str, str]:
        """Make `names` resident (least recently used tasks out if over budget); {name: why} of those that cannot
        be served."""
        problems = self.resident.prepare(names)
        self._compact()
        return problems

    def reload(self) -> None:
        """Serve the bank as it is now: a resident task whose file changed or went is dropped (read again on its
        next request); new tasks need nothing (they are read on first request)."""
        for name in self.resident.changed():
            self.resident.drop(name)
        self._compact()

    def describe(self, name: str) -> TaskRecord:
        """A resident task's record (no tensors): class names, training, preprocessing."""
        return self.resident.tasks[name].record

    def task_names(self) -> list[str]:
        """Every task this runtime may be asked for (resident or not)."""
        names = self.bank.tasks()
        return [n for n in names if n in self.resident.only] if self.resident.only is not None else names

    @property
    def resident_bytes(self) -> int:
        return self.resident.bytes

    def _group_key(self, record: TaskRecord) -> str:
        size = task_preprocessing(record.training, self.bank.identity).size if self.fixed_size else None
        key = json.dumps([record.method, record.config, size], sort_keys=True)
        return key + record.name if get_method(record.method).trains_backbone else key  # owns its backbone

    def _place(self, record: TaskRecord) -> tuple[SlotGroup, int]:
        key = self._group_key(record)
        if key not in self.groups:
            owns_backbone = get_method(record.method).trains_backbone
            base = copy.deepcopy(self.backbone) if owns_backbone else share_frozen(self.backbone)
            adapt_input_size(base, task_preprocessing(record.training, self.bank.identity).size)
            model = TunedModel(
                base, self.bank.identity.arch, record.method, [len(record.class_names)], record.config,
                self.bank.identity.fingerprint,
            )  # fmt: skip
            for _, module in task_modules(model):
                module.use_weight_cache(self.cache)
            self.groups[key] = SlotGroup(model.to(self.device).eval())
        group = self.groups[key]
        return group, group.add(record)

    def _evict(self, name: str, task: ResidentTask[SlotGroup]) -> None:
        task.placement.remove(name)

    def _compact(self) -> None:
        for key, group in list(self.groups.items()):
            if not group.slots:
                del self.groups[key]
            else:
                group.compact()

    # ---- serving ------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def predict(self, images: torch.Tensor, tasks: Sequence[str]) -> list[torch.Tensor]:
        """Logits of each sample under its own task (each of that task's class count), in input order."""
        if len(tasks) != images.shape[0]:
            raise AdapterBankError(f"{images.shape[0]} images but {len(tasks)} task names")
        self.resident.require(tasks)
        self._compact()
        rows_by_group: dict[int, list[int]] = {}
        for row, name in enumerate(tasks):
            rows_by_group.setdefault(id(self.resident.tasks[name].placement), []).append(row)
        self.cache.next_batch()
        images = images.to(self.device)
        out: list[torch.Tensor | None] = [None] * len(tasks)
        for rows in rows_by_group.values():
            group = self.resident.tasks[tasks[rows[0]]].placement
            model = group.model
            slots = torch.tensor([group.slots[tasks[r]] for r in rows], device=self.device)
            batch = images[rows] if len(rows) < len(tasks) else images
            logits = model(batch, slots if model.num_tasks > 1 else None)
            for i, row in enumerate(rows):
                out[row] = logits[i, : model.num_classes[slots[i]]].float().cpu()
        return out  # type: ignore[return-value]
