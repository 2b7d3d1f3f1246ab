"""PyTorch runtime: every task of a bank resident on one frozen backbone; `predict(images, tasks)` per sample.

Tasks are grouped by (method, config); each group is one TunedModel whose frozen weights are the very tensors of
the shared backbone (no copies), so memory is one backbone plus the task tensors. On ViT and Swin, tasks trained
at another image size form groups of their own, with position embeddings resampled to it (timm set_input_size).
A mixed batch is split by group only; inside a group each sample uses its own task (per-sample gathers for SSF,
BitFit, LoRA and heads; SNELL per task group through its merged weights W0 + dW, kept in an LRU cache under a
byte budget). `full` tasks own a whole backbone each.
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
from adapterbank.runtime.slots import TaskSlot, load_healthy, rows_per_group
from adapterbank.tuned import TunedModel


def share_frozen(backbone: nn.Module) -> nn.Module:
    """A module tree of its own whose parameters and buffers are the backbone's tensors themselves."""
    memo = {id(t): t for t in itertools.chain(backbone.parameters(), backbone.buffers())}
    return copy.deepcopy(backbone, memo)


class TorchRuntime:
    def __init__(
        self,
        bank: str | Path | Bank,
        tasks: Sequence[str] | None = None,
        device: str | torch.device = "cpu",
        snell_cache_bytes: int = 1 << 30,
    ) -> None:
        self.bank = bank if isinstance(bank, Bank) else Bank(bank)
        self.device = torch.device(device)
        self.only = list(tasks) if tasks is not None else None
        self.backbone = load_backbone(self.bank).to(self.device)
        self.snell_cache_bytes = snell_cache_bytes
        self.cache: WeightCache  # made by reload(): entries of replaced models are stale
        self.groups: list[TunedModel] = []
        self.tasks: dict[str, TaskSlot] = {}
        self.broken: dict[str, str] = {}  # tasks of the bank that fail to load, with the reason: never served
        self.reload()

    def reload(self) -> None:
        """Serve the bank as it is now: tasks committed, replaced or removed since the last load."""
        names = self.only if self.only is not None else self.bank.tasks()
        records, self.broken = load_healthy(self.bank, names, explicit=self.only is not None)
        by_group: dict[str, list[TaskRecord]] = {}
        fixed_size = has_fixed_input_size(self.backbone)
        for record in records:
            size = task_preprocessing(record.training, self.bank.identity).size if fixed_size else None
            key = json.dumps([record.method, record.config, size], sort_keys=True)
            if get_method(record.method).trains_backbone:
                key += record.name  # a task that owns its backbone never shares a model
            by_group.setdefault(key, []).append(record)
        groups, tasks = [], {}
        self.cache = WeightCache(self.snell_cache_bytes)
        for members in by_group.values():
            first = members[0]
            owns_backbone = get_method(first.method).trains_backbone
            base = copy.deepcopy(self.backbone) if owns_backbone else share_frozen(self.backbone)
            adapt_input_size(base, task_preprocessing(first.training, self.bank.identity).size)
            model = TunedModel(
                base,
                self.bank.identity.arch,
                first.method,
                [len(r.class_names) for r in members],
                first.config,
                self.bank.identity.fingerprint,
            )
            for slot, record in enumerate(members):
                load_record(model, record, slot)
                tasks[record.name] = TaskSlot(len(groups), slot, record.class_names, record)
            for _, module in task_modules(model):
                module.use_weight_cache(self.cache)
            groups.append(model.to(self.device).eval())
        self.groups, self.tasks = groups, tasks

    def task_names(self) -> list[str]:
        return list(self.tasks)

    @torch.no_grad()
    def predict(self, images: torch.Tensor, tasks: Sequence[str]) -> list[torch.Tensor]:
        """Logits of each sample under its own task (each of that task's class count), in input order."""
        rows_by_group = rows_per_group(images, tasks, self.tasks)
        self.cache.next_batch()
        images = images.to(self.device)
        out: list[torch.Tensor | None] = [None] * len(tasks)
        for group, rows in rows_by_group.items():
            model = self.groups[group]
            slots = torch.tensor([self.tasks[tasks[r]].slot for r in rows], device=self.device)
            batch = images[rows] if len(rows) < len(tasks) else images
            logits = model(batch, slots if model.num_tasks > 1 else None)
            for i, row in enumerate(rows):
                out[row] = logits[i, : len(self.tasks[tasks[row]].class_names)].float().cpu()
        return out  # type: ignore[return-value]
