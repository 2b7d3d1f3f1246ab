"""The README's main job: the quickstart trains two real-image tasks with two methods into one bank, offline."""

from __future__ import annotations

from pathlib import Path

from adapterbank.bank.store import Bank
from adapterbank.data import open_dataset
from tests.conftest import run_cli


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
