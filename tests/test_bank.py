"""The bank stores every method's task bit-exact with its metadata, and refuses bad input without touching anything."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from adapterbank import AdapterBankError, TunedModel, create_backbone
from adapterbank.bank.checkup import verify as checkup
from adapterbank.bank.store import FORMAT_VERSION, Bank
from adapterbank.bank.torch_bridge import commit, create_bank, expected_shapes, load_tasks, task_record
from adapterbank.inspection import perturb_task_parameters
from adapterbank.method_names import METHOD_NAMES
from tests.helpers import cli_in_process, images

ARCH = "vit_tiny_patch16_224"
ALL_METHODS = list(METHOD_NAMES)


@pytest.fixture(scope="module")
def backbone() -> torch.nn.Module:
    torch.manual_seed(3)
    return create_backbone(ARCH)


def tuned(backbone, method: str, classes: int = 4, seed: int = 0, **options) -> TunedModel:
    model = TunedModel(copy.deepcopy(backbone), ARCH, method, [classes], options).eval()
    torch.manual_seed(seed)
    perturb_task_parameters(model, std=0.05, seed=seed)
    return model


def snapshot(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture
def bank(tmp_path: Path, backbone) -> Bank:
    bank = create_bank(tmp_path / "bank", backbone, ARCH, "random-init")
    commit(bank, task_record(tuned(backbone, "ssf"), "keeper", class_names=list("abcd"), metrics={"accuracy": 0.5}))
    return bank


@pytest.mark.parametrize("method", ALL_METHODS)
def test_every_method_round_trips_bit_exact(bank: Bank, backbone, method: str) -> None:
    options = {"rank": 4, "sparsity": 0.3} if method == "snell" else {}
    model = tuned(backbone, method, classes=5, seed=1, **options)
    record = task_record(
        model,
        "cub",
        class_names=[f"bird{i}" for i in range(5)],
        metrics={"accuracy": 0.875},
        training={"epochs": 3, "lr": 1e-3},
    )
    stored = commit(bank, record)
    loaded, [back] = load_tasks(Bank(bank.path), ["cub"])
    original = model.state(0)
    assert loaded.state(0).keys() == original.keys()
    for key, value in original.items():
        assert torch.equal(loaded.state(0)[key], value), key
    assert (back.method, back.config, back.class_names) == (method, model.config.to_dict(), record.class_names)
    assert back.metrics == {"accuracy": 0.875} and back.training == {"epochs": 3, "lr": 1e-3}
    assert back.created == stored.created and back.updated == stored.updated and back.created
    assert back.fingerprint == bank.identity.fingerprint
    with torch.no_grad():
        assert torch.equal(loaded(images(2)), model(images(2)))


def test_backbone_is_stored_and_checked(bank: Bank, backbone) -> None:
    loaded, _ = load_tasks(bank, ["keeper"])
    assert loaded.backbone_fingerprint == bank.identity.fingerprint
    tensors = bank.backbone_tensors()
    assert np.array_equal(tensors["blocks.0.mlp.fc1.weight"], backbone.blocks[0].mlp.fc1.weight.detach().numpy())


def test_several_tasks_load_into_one_mixed_model(bank: Bank, backbone) -> None:
    models = {f"t{i}": tuned(backbone, "lora", classes=3 + i, seed=i) for i in range(3)}
    for name, model in models.items():
        commit(bank, task_record(model, name))
    mixed, _ = load_tasks(bank, ["t2", "t0", "t1"])
    x = images(3)
    with torch.no_grad():
        out = mixed(x, torch.tensor([0, 1, 2]))
        for row, name in enumerate(["t2", "t0", "t1"]):
            alone = models[name](x[row : row + 1])
            assert torch.allclose(out[row : row + 1, : alone.shape[1]], alone, atol=1e-5, rtol=1e-5)


def test_replace_keeps_created_and_other_tasks_untouched(bank: Bank, backbone) -> None:
    first = commit(bank, task_record(tuned(backbone, "bitfit", seed=1), "pets"))
    keeper_before = bank.task_file("keeper").read_bytes()
    second = commit(bank, task_record(tuned(backbone, "lora", seed=2), "pets"))
    assert second.created == first.created and bank.load("pets").method == "lora"
    assert bank.task_file("keeper").read_bytes() == keeper_before


def _assert_refused_unchanged(bank: Bank, action, *fragments: str) -> None:
    before = snapshot(bank.path)
    with pytest.raises(AdapterBankError) as info:
        action()
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
    assert snapshot(bank.path) == before


def test_commit_validation_leaves_bank_unchanged(bank: Bank, backbone) -> None:
    good = task_record(tuned(backbone, "ssf"), "dogs")
    key = "blocks.0.attn.qkv.ssf_scale"
    cases = [
        (dataclasses.replace(good, fingerprint="0" * 64), ["'dogs'", "another backbone"]),
        (dataclasses.replace(good, method="dora"), ["'dogs'", "unknown method 'dora'"]),
        (
            dataclasses.replace(good, tensors={k: v for k, v in good.tensors.items() if k != key}, shapes={}),
            ["'dogs'", "missing tensor", key],
        ),
        (
            dataclasses.replace(good, tensors={**good.tensors, key: good.tensors[key][:5]}, shapes={}),
            ["'dogs'", key, "has shape (5,)"],
        ),
        (
            dataclasses.replace(good, tensors={**good.tensors, key: good.tensors[key] * np.nan}, shapes={}),
            ["'dogs'", "NaN"],
        ),
    ]
    for record, fragments in cases:
        _assert_refused_unchanged(bank, lambda r=record: commit(bank, r), *fragments)
        # the store is the one door: called directly with the method's shapes, it refuses the same way
        expected = expected_shapes(bank.identity, good)
        _assert_refused_unchanged(bank, lambda r=record, e=expected: bank.commit(r, e), *fragments)
    for name in ["a/b", "..", "../x", "a b", ".hidden", "", "x..y", "naïve"]:
        record = dataclasses.replace(good, name=name)
        _assert_refused_unchanged(bank, lambda r=record: commit(bank, r), "invalid task name")


def test_corrupted_files_are_named(bank: Bank, backbone) -> None:
    for name in ("sum", "trunc", "junk", "future"):
        commit(bank, task_record(tuned(backbone, "ssf"), name))
    with h5py.File(bank.task_file("sum"), "r+") as f:
        f["tensors/blocks.1.mlp.fc2.ssf_shift"][0] += 1.0
    data = bank.task_file("trunc").read_bytes()
    bank.task_file("trunc").write_bytes(data[: len(data) // 2])
    bank.task_file("junk").write_bytes(b"this is not hdf5")
    with h5py.File(bank.task_file("future"), "r+") as f:
        f.attrs["format_version"] = FORMAT_VERSION + 1
    expected = {
        "sum": "tensor 'blocks.1.mlp.fc2.ssf_shift' fails its checksum",
        "trunc": "not a readable HDF5 file",
        "junk": "not a readable HDF5 file",
        "future": "newer adapterbank",
    }
    for name, fragment in expected.items():
        _assert_refused_unchanged(bank, lambda n=name: load_tasks(bank, [n]), f"task '{name}'", fragment)
    problems = dict(checkup(bank).problems)
    assert set(problems) == set(expected)
    assert load_tasks(bank, ["keeper"])[1][0].name == "keeper"


def test_unknown_task_and_missing_bank(bank: Bank, tmp_path: Path) -> None:
    _assert_refused_unchanged(bank, lambda: bank.load("nope"), "no task 'nope'", "keeper")
    with pytest.raises(AdapterBankError, match="no bank at"):
        Bank(tmp_path / "elsewhere")


def test_other_backbone_bank_refused(bank: Bank) -> None:
    other = create_backbone("vit_tiny_patch16_224")
    with pytest.raises(AdapterBankError, match="holds backbone"):
        create_bank(bank.path, other, ARCH, "random-init")


def test_cli_ls_show_rm_verify(bank: Bank, backbone) -> None:
    commit(bank, task_record(tuned(backbone, "lora"), "flowers", metrics={"accuracy": 0.9}))
    listing = cli_in_process("bank", "ls", "--bank", str(bank.path), "--json")
    assert listing.returncode == 0, listing.stderr
    rows = {row["task"]: row for row in json.loads(listing.stdout)}
    assert set(rows) == {"keeper", "flowers"}
    assert rows["flowers"]["method"] == "lora" and rows["flowers"]["value"] == 0.9
    assert rows["flowers"]["params"] == bank.load("flowers").num_values
    table = cli_in_process("bank", "ls", "--bank", str(bank.path))
    assert "flowers" in table.stdout and "accuracy 0.9" in table.stdout
    show = cli_in_process("bank", "show", "flowers", "--bank", str(bank.path), "--json")
    assert json.loads(show.stdout)["config"]["rank"] == 8
    assert cli_in_process("bank", "verify", "--bank", str(bank.path)).returncode == 0
    bank.task_file("flowers").write_bytes(b"broken")
    bad = cli_in_process("bank", "verify", "--bank", str(bank.path))
    assert bad.returncode == 1 and "flowers" in bad.stderr and "1 tasks ok, 1 bad" in bad.stdout
    assert cli_in_process("bank", "rm", "flowers", "--bank", str(bank.path)).returncode == 0
    assert bank.tasks() == ["keeper"]


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["bank", "ls", "--bank", "/nonexistent/bank"], "no bank at"),
        (["bank", "show", "nope"], "no task 'nope'"),
        (["bank", "rm", "../keeper"], "invalid task name"),
    ],
)
def test_cli_errors_are_one_line(bank: Bank, args: list[str], fragment: str) -> None:
    if "--bank" not in args:
        args = [*args, "--bank", str(bank.path)]
    before = snapshot(bank.path)
    result = cli_in_process(*args)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and fragment in result.stderr
    assert snapshot(bank.path) == before
