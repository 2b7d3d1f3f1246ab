"""Many tasks: a bank of hundreds of small tasks, served by runtimes whose resident set stays under a byte budget,
and a catalog that lists them from one file and stays exact under commits, removals and tampering."""

from __future__ import annotations

import copy
import json
import os
import random
import sqlite3

import pytest
import torch

from adapterbank import TunedModel, create_backbone
from adapterbank.bank.catalog import CATALOG_FILE
from adapterbank.bank.checkup import verify
from adapterbank.bank.store import Bank
from adapterbank.bank.torch_bridge import commit, create_bank, load_backbone, task_record
from adapterbank.inspection import perturb_task_parameters
from adapterbank.runtime import TorchRuntime
from adapterbank.runtime.slots import SLACK
from tests.helpers import assert_close_relative, cli_in_process, images

ARCH = "test_vit"  # timm's tiny ViT: hundreds of tasks commit in seconds
SSF_TASKS, LORA_TASKS, BITFIT_TASKS = 200, 70, 30
SIZE = 160


def _task(backbone, method: str, classes: int, seed: int) -> TunedModel:
    model = TunedModel(copy.deepcopy(backbone), ARCH, method, [classes]).eval()
    perturb_task_parameters(model, std=0.05, seed=seed)
    return model


@pytest.fixture(scope="module")
def bank(tmp_path_factory) -> Bank:
    torch.manual_seed(5)
    backbone = create_backbone(ARCH)
    bank = create_bank(tmp_path_factory.mktemp("many") / "bank", backbone, ARCH, "random-init")
    models = {"ssf": _task(backbone, "ssf", 4, 0)}
    for i in range(SSF_TASKS):
        perturb_task_parameters(models["ssf"], std=0.02, seed=i)  # every task its own tensors
        commit(bank, task_record(models["ssf"], f"ssf-{i}", metrics={"accuracy": i / 1000}))
    for i in range(LORA_TASKS):  # class counts vary: the group's head widens as tasks arrive
        commit(bank, task_record(_task(backbone, "lora", 2 + i % 5, 1000 + i), f"lora-{i}"))
    for i in range(BITFIT_TASKS):
        commit(bank, task_record(_task(backbone, "bitfit", 3, 2000 + i), f"bitfit-{i}"))
    return bank


@pytest.fixture(scope="module")
def few(tmp_path_factory, bank: Bank) -> Bank:
    """Twenty of the tasks in a bank of their own: for checks that read every file (verify)."""
    import shutil

    folder = tmp_path_factory.mktemp("few") / "bank"
    shutil.copytree(bank.path, folder, ignore=lambda _, names: [n for n in names if n.endswith(".h5") and
                    n[:-3] in bank.tasks() and int(n[:-3].split("-")[1]) >= 7])  # fmt: skip
    few = Bank(folder)
    few.rewrite_catalog()
    return few


def _task_bytes(bank: Bank, name: str) -> int:
    return sum(a.nbytes for a in bank.load(name).tensors.values())


def _assert_same(a: list[torch.Tensor], b: list[torch.Tensor], tol: float = 1e-5) -> None:
    for x, y in zip(a, b, strict=True):
        assert x.shape == y.shape and torch.allclose(x, y, atol=tol, rtol=tol)


@pytest.mark.slow
def test_a_small_budget_serves_every_task_as_a_runtime_holding_all(bank: Bank) -> None:
    names = bank.tasks()
    assert len(names) == SSF_TASKS + LORA_TASKS + BITFIT_TASKS
    everything = TorchRuntime(bank)
    assert not everything.resident.tasks  # nothing is read before it is asked for
    budget = 24 * _task_bytes(bank, "lora-0")
    small = TorchRuntime(bank, task_cache_bytes=budget, preload=["ssf-0", "lora-0"])
    rng = random.Random(3)
    order = names[:]
    rng.shuffle(order)
    batches = [order[i : i + 20] for i in range(0, len(order), 20)]  # every task at least once
    hot = rng.sample(names, 6)
    batches += [[rng.choice(hot) for _ in range(16)] + rng.sample(names, 4) for _ in range(6)]
    evicted = 0
    for step, batch in enumerate(batches):
        before = set(small.resident.tasks)
        x = images(len(batch), size=SIZE, seed=step)
        _assert_same(small.predict(x, batch), everything.predict(x, batch))
        evicted += len(before - set(small.resident.tasks))
        assert small.resident_bytes <= budget or set(small.resident.tasks) <= set(batch)
        assert set(batch) <= set(small.resident.tasks)  # the batch in flight is never evicted
        for group in small.groups.values():  # resized in place: free slots within 5%, head as wide as needed
            assert len(group.table.owners) - len(group.slots) <= len(group.table.owners) // SLACK
            assert group.model.max_classes() == max(group.table.classes.values())
    assert evicted > 200 and len(everything.resident.tasks) == len(names)
    ssf_group = next(g for g in everything.groups.values() if g.model.method.name == "ssf")
    held = len(ssf_group.slots) * _task_bytes(bank, "ssf-0")
    assert held <= ssf_group.held_bytes() <= 1.05 * held  # stacks: the tasks' own tensors plus at most 5%


@pytest.mark.slow
def test_onnx_runtime_with_a_small_budget_answers_as_torch_holding_all(few: Bank) -> None:
    """Stacked graphs (one per method here) fed the resident tasks' stacks: eviction and reuse of slots change
    nothing in the answers."""
    from adapterbank.runtime import ONNXRuntime

    names = few.tasks()
    everything = TorchRuntime(few)
    small = ONNXRuntime(few, task_cache_bytes=5 * _task_bytes(few, "lora-0"))
    rng = random.Random(4)
    for step in range(6):
        batch = rng.sample(names, 8)
        x = images(len(batch), size=SIZE, seed=20 + step)
        _assert_same(small.predict(x, batch), everything.predict(x, batch), tol=1e-4)  # ONNX Runtime's kernels
        assert small.resident_bytes <= 5 * _task_bytes(few, "lora-0") or set(small.resident.tasks) <= set(batch)
    assert len(list(small.cache_dir.glob("stacked-*.onnx"))) == 3  # ssf, lora, bitfit: one graph each, ever


@pytest.mark.slow
def test_commits_and_removals_reach_a_serving_runtime(bank: Bank, tmp_path) -> None:
    import shutil

    folder = tmp_path / "copy"
    shutil.copytree(bank.path, folder)  # times kept (copy2): the catalog stays usable
    copy_bank = Bank(folder)
    runtime = TorchRuntime(copy_bank, task_cache_bytes=40 * _task_bytes(copy_bank, "lora-0"))
    batch = ["ssf-1", "lora-2", "bitfit-3", "ssf-4"]
    x = images(len(batch), size=SIZE, seed=9)
    first = runtime.predict(x, batch)
    backbone = load_backbone(copy_bank)
    commit(copy_bank, task_record(_task(backbone, "lora", 3, 77), "lora-2"))  # replaced (other class count too)
    commit(copy_bank, task_record(_task(backbone, "ssf", 4, 78), "brand-new"))
    copy_bank.remove("bitfit-3")
    assert_close_relative(runtime.predict(x[:1], ["ssf-1"])[0], first[0])  # served as read (alone: its slot)
    runtime.reload()
    assert "lora-2" not in runtime.resident.tasks and "bitfit-3" not in runtime.resident.tasks
    assert "ssf-1" in runtime.resident.tasks  # unchanged tasks stay resident
    fresh = TorchRuntime(copy_bank)
    after = ["ssf-1", "lora-2", "brand-new", "ssf-4"]
    _assert_same(runtime.predict(x, after), fresh.predict(x, after))
    assert runtime.predict(x[1:2], ["lora-2"])[0].shape == (3,)
    assert "unknown task 'bitfit-3'" in runtime.prepare(["bitfit-3"])["bitfit-3"]
    assert not copy_bank.catalog_disagreements([copy_bank.load(n, with_tensors=False) for n in copy_bank.tasks()])


def test_bank_ls_reads_the_catalog_and_falls_back_to_files_it_disagrees_with(few: Bank, tmp_path) -> None:
    import shutil

    bank = few
    folder = tmp_path / "copy"
    shutil.copytree(bank.path, folder)
    listing = json.loads(cli_in_process("bank", "ls", "--bank", str(folder), "--json").stdout)
    assert len(listing) == len(bank.tasks()) and all(isinstance(row["generation"], int) for row in listing)
    by_name = {row["task"]: row for row in listing}
    assert by_name["ssf-6"]["value"] == 0.006 and by_name["lora-3"]["classes"] == 5
    touched = folder / "tasks" / "ssf-6.h5"
    os.utime(touched, ns=(touched.stat().st_atime_ns, touched.stat().st_mtime_ns + 1))  # a hand edit
    listing = {
        row["task"]: row for row in json.loads(cli_in_process("bank", "ls", "--bank", str(folder), "--json").stdout)
    }
    assert listing["ssf-6"]["generation"] is None and listing["ssf-6"]["value"] == 0.006  # read from its file
    report = verify(Bank(folder))
    assert [what for what, _ in report.problems] == ["catalog.sqlite"] and "ssf-6" in report.problems[0][1]
    assert verify(Bank(folder), repair=True).fixed and not verify(Bank(folder)).problems
    shown = json.loads(cli_in_process("bank", "show", "lora-3", "--bank", str(folder), "--json").stdout)
    assert shown["classes"] == ["0", "1", "2", "3", "4"] and shown["method"] == "lora"


@pytest.mark.parametrize(
    "tamper", ["garbage", "view", "trigger", "wrong-types", "link", "journal-link", "journal-fifo", "missing"]
)
def test_a_crafted_catalog_never_misleads_and_verify_repairs_it(few: Bank, tmp_path, tamper: str) -> None:
    import shutil

    bank = few
    folder = tmp_path / "copy"
    shutil.copytree(bank.path, folder)
    catalog = folder / CATALOG_FILE
    outside = tmp_path / "outside.sqlite"
    if tamper == "garbage":
        catalog.write_bytes(b"SQLite format 3\x00" + os.urandom(4096))
    elif tamper == "view":  # a schema that is not ours: refused before any row is read
        with sqlite3.connect(catalog) as conn:
            conn.execute("ALTER TABLE tasks RENAME TO t2")
            conn.execute("CREATE VIEW tasks AS SELECT * FROM t2")
    elif tamper == "trigger":  # our tables, plus a trigger that would run on a writer's insert
        with sqlite3.connect(catalog) as conn:
            conn.execute("CREATE TRIGGER t AFTER INSERT ON tasks BEGIN DELETE FROM tasks; END")
    elif tamper == "journal-fifo":  # SQLite would open it looking for a hot journal, and block
        os.mkfifo(folder / (CATALOG_FILE + "-journal"))
    elif tamper == "wrong-types":  # rows of our schema with values of the wrong kinds
        with sqlite3.connect(catalog) as conn:
            conn.execute("UPDATE tasks SET num_values = 1e300, metrics = 'x' WHERE name = 'ssf-3'")
            conn.execute("UPDATE tasks SET method = 'rm -rf', class_names = 3 WHERE name = 'lora-1'")
    elif tamper in ("link", "journal-link"):
        shutil.copy(catalog, outside)
        target = catalog if tamper == "link" else folder / (CATALOG_FILE + "-journal")
        target.unlink(missing_ok=True)
        target.symlink_to(outside)
    else:
        catalog.unlink()
    outside_before = outside.read_bytes() if outside.exists() else None
    truth = {name: bank.load(name, with_tensors=False) for name in bank.tasks()}
    summaries = Bank(folder).summaries()
    assert [s.name for s in summaries] == sorted(truth) and not any(s.error for s in summaries)
    for summary in summaries:
        record = truth[summary.name]
        assert (summary.method, summary.num_values, summary.metrics) == (
            record.method,
            record.num_values,
            record.metrics,
        )
    assert Bank(folder).describe("lora-1").class_names == truth["lora-1"].class_names
    if tamper not in ("journal-link", "journal-fifo"):  # no disagreement: the next writer removes it
        assert "catalog.sqlite" in {what for what, _ in verify(Bank(folder)).problems}
    commit(Bank(folder), task_record(_task(load_backbone(bank), "ssf", 4, 5), "after"))  # writers heal it
    repaired = Bank(folder)
    repaired.backbone_tensors()
    assert not verify(repaired, repair=True).problems and not verify(repaired).problems
    assert all(isinstance(s.generation, int) for s in repaired.summaries())
    assert not catalog.is_symlink() and (outside.read_bytes() if outside.exists() else None) == outside_before
