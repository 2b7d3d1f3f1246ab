"""Where a served task lives: its group (one model or graph per group), its slot in the group, its record."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from adapterbank.bank.models import check_record_shapes
from adapterbank.bank.store import Bank, TaskRecord
from adapterbank.data.preprocessing import task_preprocessing
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


def load_healthy(
    bank: Bank, names: Sequence[str], with_tensors: bool = True
) -> tuple[list[TaskRecord], dict[str, str]]:
    """(records that load, {name: error} of those that do not): one bad task never stops the others. A record is
    checked whole before anything is built from it: checksums, finite values, backbone, the tensor shapes its
    config implies (on the meta device, so a crafted config allocates nothing) and its preprocessing. A task
    removed since the listing is left out."""
    records, broken = [], {}
    for name in names:
        try:
            record = bank.load(name, with_tensors=with_tensors)
            check_record_shapes(bank.identity, record)
            task_preprocessing(record.training, bank.identity)
        except AdapterBankError as exc:
            if bank.task_file(name).exists() or bank.task_file(name).is_symlink():
                broken[name] = str(exc)
            continue
        records.append(record)
    return records, broken
