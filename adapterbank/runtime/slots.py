"""Where a served task lives: its group (one model or graph per group), its slot in the group, its record."""

from __future__ import annotations

from dataclasses import dataclass

from adapterbank.bank.store import TaskRecord


@dataclass
class TaskSlot:
    group: int
    slot: int
    class_names: list[str]
    record: TaskRecord
