"""Crash safety (SIGKILL at random instants) and concurrent writers, on real HDF5 files in real processes."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from adapterbank.bank.store import Bank
from tests import bank_writer

WRITER = str(Path(bank_writer.__file__))


def new_bank(path: Path) -> Bank:
    return Bank.create(path, bank_writer.IDENTITY, {"w": np.zeros(4, np.float32)})


def assert_every_task_loads(bank: Bank) -> None:
    """Readable, every checksum right (the store's part of `bank verify`; the backbone here is a stand-in), and
    the listing (catalog rows where they match their files) says what the files say."""
    records = [bank.load(name) for name in bank.tasks()]
    summaries = bank.summaries()
    assert [s.name for s in summaries] == [r.name for r in records]
    for summary, record in zip(summaries, records, strict=True):
        assert (summary.metrics, summary.updated, summary.error) == (record.metrics, record.updated, "")


@pytest.mark.slow
def test_sigkill_never_loses_a_committed_task(tmp_path: Path) -> None:
    bank = new_bank(tmp_path / "bank")
    rng = random.Random(7)
    returned: dict[str, int] = {}  # last seed whose commit returned, per task
    seed, kills, mid_write = 0, 0, 0
    while kills < 30:
        child = subprocess.Popen(
            [sys.executable, WRITER, str(bank.path), "loop", str(seed)], stdout=subprocess.PIPE, text=True
        )
        time.sleep(rng.uniform(0.25, 0.9))
        child.send_signal(signal.SIGKILL)
        output, _ = child.communicate()
        kills += 1
        mid_write += bool(list(bank.path.glob("tasks/.tmp-*")))  # killed with a task file half-written
        lines = [line.split() for line in output.splitlines() if line.startswith("committed")]
        for _, name, done in lines:
            returned[name] = int(done)
        seed = (int(lines[-1][2]) + 1 if lines else seed) + 1  # skip the one possibly in flight
    assert len(returned) == 8, "the writer should have completed commits of every task"
    assert mid_write > 0, "no kill landed inside a commit: the test would prove nothing"
    assert_every_task_loads(Bank(bank.path))
    healthy = [Bank(bank.path).load(name, with_tensors=False) for name in bank.tasks()]
    if Bank(bank.path).catalog_disagreements(healthy):  # killed between a task file and its row: repairable
        Bank(bank.path).rewrite_catalog()
    assert not Bank(bank.path).catalog_disagreements(healthy)
    for name, last in returned.items():
        stored = Bank(bank.path).load(name)
        seed_stored = stored.training["seed"]
        assert seed_stored >= last  # a commit that returned is never rolled back
        expected = bank_writer.tensors_for(seed_stored)
        assert stored.tensors.keys() == expected.keys()
        for key, value in expected.items():
            assert np.array_equal(stored.tensors[key], value)


def test_four_writers_forty_tasks(tmp_path: Path) -> None:
    bank = new_bank(tmp_path / "bank")
    writers = [subprocess.Popen([sys.executable, WRITER, str(bank.path), "distinct", f"p{j}", "10"]) for j in range(4)]
    assert [w.wait(timeout=300) for w in writers] == [0, 0, 0, 0]
    names = Bank(bank.path).tasks()
    assert names == sorted(f"p{j}-{i}" for j in range(4) for i in range(10))
    assert_every_task_loads(Bank(bank.path))
    assert not list(bank.path.glob("tasks/.tmp-*"))
    healthy = [Bank(bank.path).load(name, with_tensors=False) for name in names]
    assert not Bank(bank.path).catalog_disagreements(healthy)  # every writer's row, none lost
    assert Bank(bank.path).catalog.generation() == 1 + len(names)  # made empty, then one change per commit
