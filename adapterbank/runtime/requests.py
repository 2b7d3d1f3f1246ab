"""Prediction requests from a CSV of `path,task` rows: preprocessed per task, predicted in mixed batches, answered
in input order. A bad row (unknown task, unreadable image) gets an error answer; the other rows are unaffected."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from adapterbank.data.images import load_rgb
from adapterbank.data.preprocessing import Preprocessing, task_preprocessing
from adapterbank.errors import AdapterBankError
from adapterbank.runtime.onnx_runtime import ONNXRuntime
from adapterbank.runtime.torch_runtime import TorchRuntime

Runtime = TorchRuntime | ONNXRuntime


@dataclass
class Answer:
    path: str
    task: str
    labels: list[int]
    class_names: list[str]
    scores: list[float]
    error: str = ""


@dataclass(frozen=True)
class Request:
    path: str  # as written in the request file, and so in the answer
    file: Path  # where it is read from: relative paths are relative to the request file's folder
    task: str


def read_requests(csv_path: Path) -> list[Request]:
    if not csv_path.is_file():
        raise AdapterBankError(f"request file '{csv_path}' does not exist")
    try:
        with csv_path.open(newline="", encoding="utf-8-sig") as f:  # utf-8-sig: Excel starts its CSVs with a BOM
            rows = [row for row in csv.reader(f) if row and any(cell.strip() for cell in row)]
    except (UnicodeDecodeError, csv.Error) as exc:
        raise AdapterBankError(f"request file '{csv_path}' is not a UTF-8 CSV of 'path,task' rows ({exc})") from exc
    if rows and [c.strip().lower() for c in rows[0][:2]] == ["path", "task"]:
        rows = rows[1:]
    bad = next((i for i, row in enumerate(rows) if len(row) < 2), None)
    if bad is not None:
        raise AdapterBankError(f"{csv_path}: row {bad + 1} is not 'path,task'")
    return [Request(row[0], csv_path.parent / row[0].strip(), row[1].strip()) for row in rows]


class Preprocessor:
    """Each task's eval transform from its stored preprocessing contract (as `eval` uses it)."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._contracts: dict[str, Preprocessing] = {}
        self._transforms: dict[str, object] = {}

    def contract(self, task: str) -> Preprocessing:
        if task not in self._contracts:
            training = self.runtime.describe(task).training
            self._contracts[task] = task_preprocessing(training, self.runtime.bank.identity)
        return self._contracts[task]

    def size_of(self, task: str) -> int:
        return self.contract(task).size

    def __call__(self, file: Path, task: str) -> torch.Tensor:
        if task not in self._transforms:
            self._transforms[task] = self.contract(task).eval_transform()
        return self._transforms[task](load_rgb(file))


def answer(runtime: Runtime, requests: list[Request], batch_size: int, top_k: int) -> Iterator[Answer]:
    """Answers in input order, one per request; batches mix tasks (grouped only by input size)."""
    preprocess = Preprocessor(runtime)
    for start in range(0, len(requests), batch_size):
        chunk = requests[start : start + batch_size]
        answers: list[Answer | None] = [None] * len(chunk)
        by_size: dict[int, list[tuple[int, torch.Tensor]]] = {}
        problems = runtime.prepare([request.task for request in chunk])  # tasks read on first use
        for i, request in enumerate(chunk):
            if request.task in problems:
                answers[i] = Answer(request.path, request.task, [], [], [], problems[request.task])
                continue
            try:
                tensor = preprocess(request.file, request.task)
            except AdapterBankError as exc:
                answers[i] = Answer(request.path, request.task, [], [], [], str(exc))
                continue
            by_size.setdefault(preprocess.size_of(request.task), []).append((i, tensor))
        for items in by_size.values():
            indices = [i for i, _ in items]
            logits = runtime.predict(torch.stack([t for _, t in items]), [chunk[i].task for i in indices])
            for i, row in zip(indices, logits, strict=True):
                probabilities = row.softmax(-1)
                scores, labels = probabilities.topk(min(top_k, len(row)))
                names = runtime.describe(chunk[i].task).class_names
                answers[i] = Answer(
                    chunk[i].path, chunk[i].task, labels.tolist(), [names[j] for j in labels.tolist()], scores.tolist()
                )
        yield from answers  # type: ignore[misc]
