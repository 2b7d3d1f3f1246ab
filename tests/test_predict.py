"""`adapterbank predict` on real images: mixed-task request files reproduce `adapterbank eval`, bad rows fail alone."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from adapterbank.data import open_dataset
from tests.helpers import SHARED_DATA, cli_in_process, run_cli, train_args

pytestmark = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data is not present")
DATASETS = {
    "pneu": (SHARED_DATA / "vtab-1k" / "pneumonia", "ssf"),
    "digits": (SHARED_DATA / "fgvc" / "mnist5k", "snell"),  # served through cached merged weights
}


@pytest.mark.slow
def test_predict_reproduces_eval_and_isolates_bad_rows(tmp_path: Path, convnext_weights: Path) -> None:
    weights = convnext_weights
    bank = tmp_path / "bank"
    for task, (data, method) in DATASETS.items():
        extra = ("--method", method, "--max-steps", "5", "--augment", "none")
        result = run_cli(*train_args(weights, bank, task, *extra, data=data))
        assert result.returncode == 0, result.stderr[-1500:]
    truth: dict[str, int] = {}
    streams = {}
    for task, (data, _) in DATASETS.items():
        samples = open_dataset(data).split("test")[:300]
        streams[task] = [(str(path), task) for path, _ in samples]
        truth.update({str(path): label for path, label in samples})
    requests = [row for pair in zip(streams["pneu"], streams["digits"], strict=False) for row in pair]
    requests += [("missing.png", "pneu"), (requests[0][0], "nosuchtask")]
    request_file = tmp_path / "requests.csv"
    request_file.write_text("path,task\n" + "\n".join(f"{p},{t}" for p, t in requests) + "\n")
    result = run_cli("predict", "--bank", str(bank), str(request_file), "--batch-size", "24")
    assert result.returncode == 1 and "2 of 602 requests failed" in result.stderr
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [(r["path"].split("/")[-1], r["task"]) for r in rows] == [(Path(p).name, t) for p, t in requests]
    assert "missing.png" in rows[-2]["error"] and "unknown task 'nosuchtask'" in rows[-1]["error"]
    for task, (data, _) in DATASETS.items():
        answered = [r for r in rows[:-2] if r["task"] == task]
        assert all(not r["error"] and 0 <= float(r["score"]) <= 1 for r in answered)
        accuracy = sum(int(r["label"]) == truth[r["path"]] for r in answered) / len(answered)
        subset = tmp_path / f"{task}-subset"
        _write_subset(data, subset, [Path(r["path"]) for r in answered])
        evaluated = cli_in_process(
            "eval",
            "--task",
            task,
            "--data",
            str(subset),
            "--split",
            "test",
            "--bank",
            str(bank),
            "--json",
            "--workers",
            "0",
        )
        assert evaluated.returncode == 0, evaluated.stderr[-1500:]
        assert abs(json.loads(evaluated.stdout)["accuracy"] - accuracy) <= 1 / len(answered)


def _write_subset(data: Path, folder: Path, paths: list[Path]) -> None:
    """The same images as a CSV-layout dataset, so `eval` scores exactly the rows predict answered."""
    dataset = open_dataset(data)
    labels = {str(p): label for p, label in dataset.split("test")}
    folder.mkdir()
    names = dataset.class_names
    train_rows = [f"{p},{names[label]}" for p, label in dataset.split(dataset.default_splits()[0])]
    (folder / "train.csv").write_text("path,label\n" + "\n".join(train_rows) + "\n")
    test_rows = [f"{p},{names[labels[str(p)]]}" for p in paths]
    (folder / "test.csv").write_text("path,label\n" + "\n".join(test_rows) + "\n")
