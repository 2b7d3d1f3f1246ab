"""`adapterbank predict --engine ray`: the request CSV as a Ray Data job. Each actor holds one runtime over the bank
(a stateful `map_batches` class) and answers its batches with `answer`, the code the local `predict` runs, so a
cluster of N machines answers N times the images with the same answers. Image paths and the bank must be readable
at the same paths on every node (a shared filesystem)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from adapterbank.runtime.requests import Answer, Request, answer
from adapterbank.service.bank_service import ServiceOptions
from adapterbank.service.cluster import connect


@dataclass(frozen=True)
class RayJob:
    address: str | None = None  # None: a local Ray started here
    actors: int = 1  # runtimes answering at once (each loads the backbone)
    actor_cpus: float = 1.0
    actor_gpus: float = 0.0
    num_cpus: int | None = None  # of the local Ray


class _Answerer:
    """One per Ray actor: the runtime is built once and answers every batch the actor is given."""

    def __init__(self, bank: str, options: ServiceOptions, batch_size: int, top_k: int) -> None:
        from adapterbank.allocator import keep_freed_memory
        from adapterbank.runtime import open_runtime

        keep_freed_memory()  # the actor is a process of its own answering batch after batch
        self.runtime = open_runtime(
            bank,
            options.backend,
            options.snell_cache_bytes,
            options.task_cache_bytes,
            options.preload,
            options.device,
        )
        self.batch_size, self.top_k = batch_size, top_k

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        requests = [
            Request(str(path), Path(str(file)), str(task))
            for path, file, task in zip(batch["path"], batch["file"], batch["task"], strict=True)
        ]
        answers = list(answer(self.runtime, requests, self.batch_size, self.top_k))
        encoded = [json.dumps([a.labels, a.class_names, a.scores, a.error]) for a in answers]  # exact floats
        return {"row": batch["row"], "answer": np.array(encoded, dtype=object)}


def answer_on_ray(
    bank: str | Path,
    requests: list[Request],
    options: ServiceOptions,
    batch_size: int,
    top_k: int,
    job: RayJob,
) -> Iterator[Answer]:
    """Answers in input order, computed by `job.actors` runtimes on Ray."""
    import ray.data

    connect(job.address, job.num_cpus)
    logging.getLogger("ray.data").setLevel(logging.ERROR)  # execution plans and timings are not for users
    ray.data.DataContext.get_current().enable_progress_bars = False  # the CLI shows its own progress
    if job.actor_gpus > 0 and options.backend == "torch":
        options = replace(options, device="cuda")
    rows = [{"row": i, "path": r.path, "file": str(r.file.resolve()), "task": r.task} for i, r in enumerate(requests)]
    dataset = ray.data.from_items(rows, override_num_blocks=max(1, min(len(rows) // batch_size, 4 * job.actors)))
    answered = dataset.map_batches(
        _Answerer,
        fn_constructor_kwargs={
            "bank": str(Path(bank).resolve()),
            "options": options,
            "batch_size": batch_size,
            "top_k": top_k,
        },
        batch_size=batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=job.actors),
        num_cpus=job.actor_cpus,
        num_gpus=job.actor_gpus,
        max_restarts=0,  # a runtime that fails is an error, not a silent retry with lost constructor arguments
    )
    results: list[dict[str, Any] | None] = [None] * len(requests)
    for row in answered.iter_rows():
        results[int(row["row"])] = row
    for request, row in zip(requests, results, strict=True):
        if row is None:
            yield Answer(request.path, request.task, [], [], [], "no answer came back from Ray")
            continue
        labels, names, scores, error = json.loads(row["answer"])
        yield Answer(request.path, request.task, labels, names, scores, error)
