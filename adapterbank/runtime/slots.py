"""Where a served task lives: its group (one model or graph per group), its slot in the group, its record."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from adapterbank.bank.store import Bank, TaskRecord
from adapterbank.bank.torch_bridge import check_record_shapes
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


# What a crafted record can make the checks below raise besides AdapterBankError: all mean "this task is bad".
UNTRUSTED_RECORD_ERRORS = (AdapterBankError, TypeError, ValueError, KeyError, AttributeError, OverflowError)


def check_record(bank: Bank, name: str) -> TaskRecord:
    """A banked task read as untrusted data: declared shapes first (no tensor read), then checked against the
    shapes its method and config imply (on the meta device, so a crafted config allocates nothing) and its
    preprocessing, and only then its tensors (checksums, finite values)."""
    check_record_shapes(bank.identity, bank.load(name, with_tensors=False))
    record = bank.load(name)
    task_preprocessing(record.training, bank.identity)
    return record


def load_healthy(bank: Bank, names: Sequence[str], explicit: bool = False) -> tuple[list[TaskRecord], dict[str, str]]:
    """(records that pass `check_record`, {name: reason} of those that do not): one bad task never stops the
    others. A task removed since the listing is left out, unless it was asked for by name (`explicit`)."""
    records, broken = [], {}
    for name in names:
        try:
            records.append(check_record(bank, name))
        except UNTRUSTED_RECORD_ERRORS as exc:
            file = bank.task_file(name)
            if file.exists() or file.is_symlink():
                broken[name] = str(exc) if isinstance(exc, AdapterBankError) else f"task '{name}': malformed ({exc})"
            elif explicit:
                raise AdapterBankError(f"no task '{name}' in bank '{bank.path}'") from exc
    return records, broken
