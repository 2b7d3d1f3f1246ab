"""Resident tasks in stacked slots: which task holds which slot, and how the stacks grow and shrink; and how a
banked task is read as untrusted data before it takes a slot."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from adapterbank.bank.store import Bank, TaskRecord
from adapterbank.bank.torch_bridge import check_record_shapes
from adapterbank.data.preprocessing import task_preprocessing
from adapterbank.errors import AdapterBankError

GROWTH = 50  # a full table grows by 1 slot per 50 held (2%)
SLACK = 20  # a table with more than 1 free slot per 20 held (5%) is compacted

# resize(keep, capacity, max_classes): keep the tasks of slots `keep` as slots 0..len(keep)-1 of `capacity` slots,
# the class axis of the head at least `max_classes` wide
Resize = Callable[[Sequence[int], int, int], None]


class SlotTable:
    """Which task holds which slot of a group's stacked tensors. A full table grows by about 2% (amortised
    copies), one with more than 5% free slots is compacted: the stacks hold the resident tasks' tensors plus at most
    5%. Every resize renumbers the slots; read `slots` after add/compact."""

    def __init__(self, resize: Resize, capacity: int = 1) -> None:
        self.resize = resize
        self.owners: list[str | None] = [None] * capacity
        self.slots: dict[str, int] = {}
        self.classes: dict[str, int] = {}
        self.width = 1  # classes the head stacks hold

    def add(self, name: str, classes: int) -> int:
        free = next((i for i, owner in enumerate(self.owners) if owner is None), None)
        if free is None or classes > self.width:
            held = len(self.slots)
            self._resize(held + 1 + held // GROWTH, max(classes, self.width))
            free = held
        self.owners[free] = name
        self.slots[name] = free
        self.classes[name] = classes
        return free

    def remove(self, name: str) -> None:
        self.owners[self.slots.pop(name)] = None
        del self.classes[name]

    def compact(self) -> None:
        """Shrink to the held tasks when more than 5% of the slots are free, or the head stacks are wider than the
        widest held task (a wide task that left must not keep every slot wide)."""
        if not self.slots:
            return
        widest = max(self.classes.values())
        if len(self.owners) - len(self.slots) > len(self.owners) // SLACK or widest < self.width:
            self._resize(len(self.slots), widest)

    def _resize(self, capacity: int, width: int) -> None:
        keep = sorted(self.slots.values())
        self.resize(keep, capacity, width)
        self.width = width
        renumbered = {old: new for new, old in enumerate(keep)}
        self.slots = {name: renumbered[slot] for name, slot in self.slots.items()}
        self.owners = [None] * capacity
        for name, slot in self.slots.items():
            self.owners[slot] = name


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


def load_healthy(bank: Bank, names: Sequence[str]) -> tuple[list[TaskRecord], dict[str, str]]:
    """(records that pass `check_record`, {name: reason} of those that do not): one bad task never stops the
    others. A task removed since the listing is left out."""
    records, broken = [], {}
    for name in names:
        try:
            records.append(check_record(bank, name))
        except UNTRUSTED_RECORD_ERRORS as exc:
            file = bank.task_file(name)
            if file.exists() or file.is_symlink():
                broken[name] = str(exc) if isinstance(exc, AdapterBankError) else f"task '{name}': malformed ({exc})"
    return records, broken
