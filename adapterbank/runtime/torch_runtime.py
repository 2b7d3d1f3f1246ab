"""PyTorch runtime: tasks of a bank loaded on first request onto one frozen backbone; `predict(images, tasks)`.

Resident tasks are grouped by (method, config, image size); each group is one TunedModel whose frozen weights are
the very tensors of the shared backbone (no copies) and whose task tensors are stacked in slots, so memory is one
backbone plus the resident tasks' tensors. Slots are handed out by slots.SlotTable (stacks grow by about 2% when
full, compact when more than 5% are free, resized in place: the model is not rebuilt). On ViT and Swin, tasks trained
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
from adapterbank.methods import get_method
from adapterbank.methods.base import task_modules
from adapterbank.methods.weight_cache import WeightCache
from adapterbank.runtime.resident import ResidentRuntime
from adapterbank.runtime.slots import SlotTable
from adapterbank.tuned import TunedModel


def share_frozen(backbone: nn.Module) -> nn.Module:
    """A module tree of its own whose parameters and buffers are the backbone's tensors themselves."""
    memo = {id(t): t for t in itertools.chain(backbone.parameters(), backbone.buffers())}
    return copy.deepcopy(backbone, memo)


MERGED_MIN_ROWS = 8  # rows per task from which a task's rows run through its merged model


class SlotGroup:
    """Resident tasks of one kind in the stacked slots of one TunedModel."""

    def __init__(self, model: TunedModel) -> None:
        self.model = model
        self.table = SlotTable(model.resize_slots)
        self.table.width = model.max_classes()

    @property
    def slots(self) -> dict[str, int]:
        return self.table.slots

    @property
    def tunes_backbone_layers(self) -> bool:
        """Whether the method changes layers of the backbone (not only the head), so a merged model saves work."""
        return any(path != self.model.head_path for path, _ in task_modules(self.model.model))

    def held_bytes(self) -> int:
        """Bytes of the task stacks (for a `full` task: its whole model)."""
        if self.model.method.trains_backbone:
            tensors = itertools.chain(self.model.parameters(), self.model.buffers())
        else:
            tensors = (p for _, m in task_modules(self.model.model) for _, p in m.named_parameters(recurse=False))
        return sum(t.numel() * t.element_size() for t in tensors)

    def add(self, record: TaskRecord) -> int:
        """Load `record` into a free slot; returns what one slot costs."""
        slot = self.table.add(record.name, len(record.class_names))
        self.model.set_task_classes(slot, len(record.class_names))
        load_record(self.model, record, slot)
        return self.held_bytes() // len(self.table.owners)


class TorchRuntime(ResidentRuntime[SlotGroup]):
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
        tasks' tensors stay under it (None: no limit). `preload`: hot tasks loaded now (bad ones in `broken`).
        `snell_cache_bytes`: the merged-weight cache (SNELL's per-layer W0 + dW, and merged models of tasks a batch
        holds many rows of)."""
        super().__init__(bank if isinstance(bank, Bank) else Bank(bank), tasks, task_cache_bytes, preload)
        self.device = torch.device(device)
        self.backbone = load_backbone(self.bank).to(self.device)
        self.fixed_size = has_fixed_input_size(self.backbone)
        self.cache = WeightCache(snell_cache_bytes)
        self.backbone_bytes = sum(t.numel() * t.element_size() for t in self.backbone.state_dict().values())
        self._start(tasks, preload)

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

    def _run(self, group: SlotGroup, images: torch.Tensor, slots: list[int]) -> torch.Tensor:
        if self._merged_pays(group, slots):
            return self._run_merged(group, images, slots)
        model = group.model
        return model(images, torch.tensor(slots, device=self.device) if model.num_tasks > 1 else None)

    def _merged_pays(self, group: SlotGroup, slots: list[int]) -> bool:
        """Whether this group's rows run faster task by task through merged models (dLoRA's switch): when each
        task has MERGED_MIN_ROWS rows or more on average, so that a batch of them is as efficient as the whole, and
        the merged models fit the cache (a miss costs a merge)."""
        method = group.model.method
        if not method.mergeable or method.trains_backbone or not group.tunes_backbone_layers:
            return False
        tasks = len(set(slots))
        return len(slots) >= MERGED_MIN_ROWS * tasks and tasks * self.backbone_bytes <= self.cache.max_bytes

    def _run_merged(self, group: SlotGroup, images: torch.Tensor, slots: list[int]) -> torch.Tensor:
        """Each task's rows through its merged model (cached); logits padded with -inf as the mixed forward's."""
        index = torch.tensor(slots, device=self.device)
        out = images.new_full((len(slots), group.model.max_classes()), float("-inf"))
        for slot in sorted(set(slots)):
            name = group.table.owners[slot]
            key = ("merged", id(group), name, self.resident.tasks[name].key)
            merged = self.cache.get(key, lambda slot=slot: group.model.merge(slot, share=True))
            rows = (index == slot).nonzero().flatten()
            logits = merged(images.index_select(0, rows))
            out[rows, : logits.shape[1]] = logits
        return out

    @torch.no_grad()
    def predict(self, images: torch.Tensor, tasks: Sequence[str]) -> list[torch.Tensor]:
        """Logits of each sample under its own task (each of that task's class count), in input order."""
        self.cache.next_batch()
        return super().predict(images.to(self.device), tasks)
