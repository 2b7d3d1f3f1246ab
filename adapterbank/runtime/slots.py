"""Where a served task lives: its group (one model or graph per group), its slot in the group, its record."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from adapterbank.bank.store import TaskRecord
from adapterbank.errors import AdapterBankError


@dataclass
class TaskSlot:
    group: int
    slot: int
    class_names: list[str]
    record: TaskRecord


def rows_per_group(images: torch.Tensor, tasks: Sequence[str], served: Mapping[str, TaskSlot]) -> dict[int, list[int]]:
    """Validate a request batch and split its rows by the group (model or graph) that serves each task."""
    if len(tasks) != images.shape[0]:
        raise AdapterBankError(f"{images.shape[0]} images but {len(tasks)} task names")
    unknown = sorted({t for t in tasks if t not in served})
    if unknown:
        raise AdapterBankError(f"unknown task '{unknown[0]}' (serving: {', '.join(served) or 'none'})")
    groups: dict[int, list[int]] = {}
    for row, name in enumerate(tasks):
        groups.setdefault(served[name].group, []).append(row)
    return groups
