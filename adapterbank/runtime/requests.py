"""Prediction requests from a CSV of `path,task` rows: preprocessed per task, predicted in mixed batches, answered
in input order. A bad row (unknown task, unreadable image) gets an error answer; the other rows are unaffected."""

from __future__ import annotations

import csv
import functools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

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
    """Each task's eval transform from its stored preprocessing contract (as `eval` uses it), read from the record
    the runtime holds now: a task replaced while serving is preprocessed by its new contract."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._transforms: dict[Preprocessing, Callable[[Image.Image], torch.Tensor]] = {}

    def contract(self, task: str) -> Preprocessing:
        return task_preprocessing(self.runtime.describe(task).training, self.runtime.bank.identity)

    def __call__(self, image: Image.Image, contract: Preprocessing) -> torch.Tensor:
        if contract not in self._transforms:
            self._transforms[contract] = contract.eval_transform()
        return self._transforms[contract](image)


@dataclass(frozen=True)
class ImageItem:
    task: str
    read: Callable[[], Image.Image]  # the decoded image; raises AdapterBankError when it cannot be read
    top_k: int = 1


@dataclass(frozen=True)
class Prediction:
    labels: list[int]
    class_names: list[str]
    scores: list[float]
    error: str = ""


def predict_items(runtime: Runtime, preprocess: Preprocessor, items: Sequence[ImageItem]) -> list[Prediction]:
    """One mixed batch (grouped only by input size): a prediction per item, in order; an item whose task cannot be
    served or whose image cannot be read gets an error and leaves the others unaffected."""
    out: list[Prediction | None] = [None] * len(items)
    by_size: dict[int, list[tuple[int, torch.Tensor]]] = {}
    problems = runtime.prepare([item.task for item in items])  # tasks read on first use
    for i, item in enumerate(items):
        if item.task in problems:
            out[i] = Prediction([], [], [], problems[item.task])
            continue
        contract = preprocess.contract(item.task)
        try:
            tensor = preprocess(item.read(), contract)
        except AdapterBankError as exc:
            out[i] = Prediction([], [], [], str(exc))
            continue
        except Exception as exc:  # an image no check foresaw (e.g. MemoryError): its item fails, the batch goes on
            out[i] = Prediction([], [], [], f"cannot preprocess the image: {type(exc).__name__}: {str(exc)[:160]}")
            continue
        by_size.setdefault(contract.size, []).append((i, tensor))
    for rows in by_size.values():
        indices = [i for i, _ in rows]
        logits = runtime.predict(torch.stack([t for _, t in rows]), [items[i].task for i in indices])
        for i, row in zip(indices, logits, strict=True):
            scores, labels = row.softmax(-1).topk(min(items[i].top_k, len(row)))
            names = runtime.describe(items[i].task).class_names
            out[i] = Prediction(labels.tolist(), [names[j] for j in labels.tolist()], scores.tolist())
    return out  # type: ignore[return-value]


def answer(runtime: Runtime, requests: list[Request], batch_size: int, top_k: int) -> Iterator[Answer]:
    """Answers in input order, one per request; batches mix tasks (grouped only by input size)."""
    preprocess = Preprocessor(runtime)
    for start in range(0, len(requests), batch_size):
        chunk = requests[start : start + batch_size]
        items = [ImageItem(r.task, functools.partial(load_rgb, r.file), top_k) for r in chunk]
        for request, got in zip(chunk, predict_items(runtime, preprocess, items), strict=True):
            yield Answer(request.path, request.task, got.labels, got.class_names, got.scores, got.error)
