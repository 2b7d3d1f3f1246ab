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
from typing import Generic, TypeVar

from adapterbank.bank.catalog import file_key
from adapterbank.bank.store import Bank, TaskRecord, valid_task_name
from adapterbank.errors import AdapterBankError
from adapterbank.runtime.slots import UNTRUSTED_RECORD_ERRORS, check_record

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
    tasks: OrderedDict[str, ResidentTask[Placement]] = field(default_factory=OrderedDict)
    broken: dict[str, tuple[str, str]] = field(default_factory=dict)  # name -> (file key, why): not read again

    @property
    def bytes(self) -> int:
        return sum(task.bytes for task in self.tasks.values())

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
        key = file_key(self.bank.task_file(name))
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
        placement, cost = self.place(record)
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
        return [name for name, task in self.tasks.items() if file_key(self.bank.task_file(name)) != task.key]

    def require(self, names: Sequence[str]) -> None:
        """prepare(names), refusing the batch if any task cannot be served (one line, the first problem)."""
        problems = self.prepare(names)
        if problems:
            raise AdapterBankError(next(iter(problems.values())))


def _without_tensors(record: TaskRecord) -> TaskRecord:
    return replace(record, tensors={}, shapes=dict(record.shapes))
