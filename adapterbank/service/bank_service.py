"""What one serving replica does, without Ray: answer batches of image requests of many tasks with one runtime.

Ray Serve (`adapterbank.service.app`) collects requests of many clients into the batches this answers; tests and
benchmarks can drive it directly. A batch is computed by `predict_items`, the code `adapterbank predict` runs, so
the service answers what `predict` answers. Before each batch the runtime drops resident tasks whose file changed
(one stat each): a commit is served from the next batch on, and a batch in flight finishes on the version it read.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from adapterbank.bank.store import Bank, valid_task_name
from adapterbank.data.images import decode_rgb
from adapterbank.data.preprocessing import task_preprocessing
from adapterbank.errors import AdapterBankError
from adapterbank.runtime import open_runtime
from adapterbank.runtime.requests import ImageItem, Prediction, Preprocessor, predict_items
from adapterbank.service.protocol import BadRequest, ImageRequest


@dataclass(frozen=True)
class ServiceOptions:
    backend: str = "torch"
    device: str = "cpu"  # torch backend; the ONNX backend picks CUDA itself when it is usable
    task_cache_bytes: int | None = None
    snell_cache_bytes: int = 1 << 30
    preload: tuple[str, ...] = ()
    cross_task: bool = True  # False: each batch is run one task at a time (the baseline `bench http` measures)


@dataclass(frozen=True)
class DecodedRequest:
    task: str
    image: Image.Image
    top_k: int


class BankService:
    def __init__(self, bank: str | Path, options: ServiceOptions | None = None) -> None:
        self.bank = Bank(bank)
        self.options = options = options or ServiceOptions()
        self.runtime = open_runtime(
            self.bank,
            options.backend,
            options.snell_cache_bytes,
            options.task_cache_bytes,
            options.preload,
            options.device,
        )
        self.preprocess = Preprocessor(self.runtime)
        self._lock = threading.Lock()

    def check(self, request: ImageRequest) -> DecodedRequest:
        """Refuse what can be refused before a batch (unknown task: 404; undecodable image: 400); decode the image."""
        if not valid_task_name(request.task) or not self.bank.task_file(request.task).is_file():
            raise BadRequest(f"unknown task '{request.task[:200]}'", 404)
        try:
            image = decode_rgb(request.image)
        except Exception as exc:  # AdapterBankError from the decoder; anything else is still the request's fault
            raise BadRequest(str(exc).splitlines()[0] if str(exc) else "the image cannot be decoded") from exc
        return DecodedRequest(request.task, image, request.top_k)

    def answer(self, batch: Sequence[DecodedRequest]) -> list[Prediction]:
        """Predictions in order; a request whose task cannot be served gets an error, the others are answered.
        One batch at a time: the runtime's slot tables and caches are not shared between threads."""
        with self._lock:
            return self._answer(batch)

    def _answer(self, batch: Sequence[DecodedRequest]) -> list[Prediction]:
        self.runtime.reload()
        items = [ImageItem(r.task, _returning(r.image), r.top_k) for r in batch]
        if self.options.cross_task:
            return predict_items(self.runtime, self.preprocess, items)
        out: list[Prediction | None] = [None] * len(items)
        for task in dict.fromkeys(item.task for item in items):
            rows = [i for i, item in enumerate(items) if item.task == task]
            for i, got in zip(
                rows, predict_items(self.runtime, self.preprocess, [items[i] for i in rows]), strict=True
            ):
                out[i] = got
        return out  # type: ignore[return-value]

    def describe(self, name: str) -> dict[str, Any]:
        """One task for clients: its classes and how to prepare images for it; nothing of the server's paths."""
        if not valid_task_name(name) or not self.bank.task_file(name).is_file():
            raise BadRequest(f"unknown task '{name[:200]}'", 404)
        try:
            record = self.bank.describe(name)
            contract = task_preprocessing(record.training, self.bank.identity)
        except AdapterBankError as exc:
            raise BadRequest(str(exc).splitlines()[0], 422) from exc
        return {
            "name": name,
            "method": record.method,
            "classes": record.class_names,
            "preprocessing": contract.manifest(),
            "metrics": record.metrics,
        }

    def tasks(self) -> list[dict[str, Any]]:
        """Every task of the bank, from its catalog: name, method, classes, version (its last commit's time)."""
        return [
            {"name": s.name, "method": s.method, "classes": s.num_classes, "version": s.updated}
            | ({"error": s.error} if s.error else {})
            for s in self.bank.summaries()
        ]


def _returning(image: Image.Image) -> Callable[[], Image.Image]:
    return lambda: image
