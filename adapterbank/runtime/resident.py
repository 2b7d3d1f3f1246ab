"""Which tasks a runtime holds in memory: loaded on first request, least recently used out under a byte budget.

A runtime's cost follows the tasks in use, not the tasks stored. A task is read from its file (every check of
`check_record`) the first time a batch asks for it; the resident set is kept under `budget` bytes of task tensors
by evicting the least recently used tasks, never one of the batch being prepared (a batch whose own tasks exceed
the budget is still served, and the set shrinks back on the next batch). `reload()` costs one stat per resident
task: a task whose file changed (a commit, a removal, a hand edit) is dropped and read again on its next request.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Generic, Protocol, TypeVar

import torch

from adapterbank.bank.catalog import file_key
from adapterbank.bank.store import Bank, TaskRecord, valid_task_name
from adapterbank.errors import AdapterBankError
from adapterbank.runtime.slots import UNTRUSTED_RECORD_ERRORS, SlotTable, check_record

Placement = TypeVar("Placement")


@dataclass
class ResidentTask(Generic[Placement]):
    record: TaskRecord  # without tensors: they live in the runtime's model or graph only
    key: str  # the file's key (catalog.file_key) when it was read
    bytes: int  # what holding it costs (its share of the runtime's stacks)
    placement: Placement


@dataclass
class ResidentSet(Generic[Placement]):
    """Tasks held by a runtime, most recently used last. `place(record)` puts a checked record into the runtime
    and returns (placement, bytes); `evict(name, task)` takes it out."""

    bank: Bank
    place: Callable[[TaskRecord], tuple[Placement, int]]
    evict: Callable[[str, ResidentTask[Placement]], None]
    budget: int | None = None  # bytes of resident tasks; None: no limit
    only: frozenset[str] | None = None  # serve only these tasks
    held: Callable[[], int] | None = None  # what the runtime holds for its tasks now (stacks are resized as a whole)
    tasks: OrderedDict[str, ResidentTask[Placement]] = field(default_factory=OrderedDict)
    broken: dict[str, tuple[str, str]] = field(default_factory=dict)  # name -> (file key, why): not read again

    @property
    def bytes(self) -> int:
        return self.held() if self.held is not None else sum(task.bytes for task in self.tasks.values())

    def prepare(self, names: Iterable[str]) -> dict[str, str]:
        """Make every task of `names` resident; returns {name: why} for those that cannot be served."""
        wanted = list(dict.fromkeys(names))
        problems = {}
        for name in wanted:
            if name in self.tasks:
                self.tasks.move_to_end(name)
                continue
            problem = self._load(name, protect=set(wanted))
            if problem:
                problems[name] = problem
        return problems

    def _load(self, name: str, protect: set[str]) -> str:
        if (self.only is not None and name not in self.only) or not valid_task_name(name):
            return f"unknown task '{name[:200]}'"
        key = file_key(self.bank.task_file(name), strict=True)
        if key is None:
            return f"unknown task '{name}'" + (" (not a regular file)" if self.bank.task_file(name).exists() else "")
        if name in self.broken and self.broken[name][0] == key:
            return self.broken[name][1]
        try:
            record = check_record(self.bank, name)
        except UNTRUSTED_RECORD_ERRORS as exc:
            why = str(exc) if isinstance(exc, AdapterBankError) else f"task '{name}': malformed ({exc})"
            self.broken[name] = (key, why)
            return why
        self.broken.pop(name, None)
        self._make_room(record, protect)
        try:
            placement, cost = self.place(record)
        except AdapterBankError as exc:  # e.g. its graph failed to export: this task is not served, the rest are
            self.broken[name] = (key, str(exc))
            return str(exc)
        self.tasks[name] = ResidentTask(_without_tensors(record), key, cost, placement)
        return ""

    def _make_room(self, record: TaskRecord, protect: set[str]) -> None:
        if self.budget is None:
            return
        needed = sum(array.nbytes for array in record.tensors.values())
        for name in [n for n in self.tasks if n not in protect]:  # least recently used first
            if self.bytes + needed <= self.budget:
                return
            self.drop(name)

    def drop(self, name: str) -> None:
        task = self.tasks.pop(name, None)
        if task is not None:
            self.evict(name, task)

    def changed(self) -> list[str]:
        """Resident tasks whose file is no longer the version that was read (one stat each)."""
        return [
            name for name, task in self.tasks.items() if file_key(self.bank.task_file(name), strict=True) != task.key
        ]

    def require(self, names: Sequence[str]) -> None:
        """prepare(names), refusing the batch if any task cannot be served (one line, the first problem)."""
        problems = self.prepare(names)
        if problems:
            raise AdapterBankError(next(iter(problems.values())))


def _without_tensors(record: TaskRecord) -> TaskRecord:
    return replace(record, tensors={}, shapes=dict(record.shapes))


class Group(Protocol):
    """Resident tasks computed together (one model or one graph), each in a slot of `table`."""

    table: SlotTable

    def held_bytes(self) -> int:
        """What holding the group's tasks costs (stacks, or a task's own graph or model)."""
        ...


G = TypeVar("G", bound=Group)


class ResidentRuntime(Generic[G]):
    """What both runtimes share: tasks read on first request into groups, `predict` split by group only.
    Subclasses say how a record joins a group (`_place`) and how a group computes its rows (`_run`)."""

    def __init__(
        self, bank: Bank, tasks: Sequence[str] | None, task_cache_bytes: int | None, preload: Sequence[str]
    ) -> None:
        self.bank = bank
        self.groups: dict[str, G] = {}
        only = frozenset(tasks) if tasks is not None else None
        self.resident: ResidentSet[G] = ResidentSet(
            bank, self._place, self._evict, task_cache_bytes, only, held=self._held_bytes
        )
        if tasks is not None:
            stored = set(bank.tasks())
            missing = [name for name in tasks if name not in stored]
            if missing:
                raise AdapterBankError(f"no task '{missing[0]}' in bank '{bank.path}'")

    def _start(self, tasks: Sequence[str] | None, preload: Sequence[str]) -> None:
        """Load the tasks asked for by name and the hot ones; `broken`: those that cannot be served, and why."""
        self.broken = self.prepare([*(tasks or ()), *preload])

    def _place(self, record: TaskRecord) -> tuple[G, int]:
        """Put a checked record into a group (made if needed); returns it and what holding the task costs."""
        raise NotImplementedError

    def _run(self, group: G, images: torch.Tensor, slots: list[int]) -> torch.Tensor:
        """Logits (rows, classes padded) of `images`, row i under the task in slot slots[i]."""
        raise NotImplementedError

    def _held_bytes(self) -> int:
        return sum(group.held_bytes() for group in self.groups.values())

    def _evict(self, name: str, task: ResidentTask[G]) -> None:
        task.placement.table.remove(name)

    def _compact(self) -> None:
        for key, group in list(self.groups.items()):
            if not group.table.slots:
                del self.groups[key]  # its model or session goes with it
            else:
                group.table.compact()

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

    def predict(self, images: torch.Tensor, tasks: Sequence[str]) -> list[torch.Tensor]:
        """Logits of each sample under its own task (each of that task's class count), in input order."""
        if len(tasks) != images.shape[0]:
            raise AdapterBankError(f"{images.shape[0]} images but {len(tasks)} task names")
        self.resident.require(tasks)
        self._compact()
        rows_by_group: dict[int, list[int]] = {}
        for row, name in enumerate(tasks):
            rows_by_group.setdefault(id(self.resident.tasks[name].placement), []).append(row)
        out: list[torch.Tensor | None] = [None] * len(tasks)
        for rows in rows_by_group.values():
            group = self.resident.tasks[tasks[rows[0]]].placement
            slots = [group.table.slots[tasks[r]] for r in rows]
            logits = self._run(group, images[rows] if len(rows) < len(tasks) else images, slots)
            for i, row in enumerate(rows):
                out[row] = logits[i, : len(self.resident.tasks[tasks[row]].record.class_names)].float().cpu()
        return out  # type: ignore[return-value]
