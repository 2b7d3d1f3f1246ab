"""`adapterbank predict`: a CSV of (image, task) requests answered in mixed-task batches."""

from __future__ import annotations

import csv
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.progress import Progress

from adapterbank.atomic_files import publish, temporary_path
from adapterbank.errors import AdapterBankError
from cli.output import console
from cli.ownership import owned_heap

if TYPE_CHECKING:
    from collections.abc import Iterable

    from adapterbank.runtime.requests import Answer
    from adapterbank.service.batch_job import RayJob

COLUMNS = ["path", "task", "label", "class_name", "score", "error"]


def predict(
    ctx: typer.Context,
    requests: Path = typer.Argument(..., help="CSV with 'path,task' rows (paths relative to the CSV's folder)."),
    bank: Path = typer.Option(Path("bank"), "--bank", help="Bank folder."),
    out: Path | None = typer.Option(None, "--out", help="Output CSV (default: standard output)."),
    backend: str = typer.Option("torch", "--backend", help="torch, or onnx (ONNX Runtime; CUDA when usable)."),
    batch_size: int = typer.Option(64, "--batch-size", min=1),
    top_k: int = typer.Option(1, "--top-k", min=1, help="Classes per answer (';'-separated when more than 1)."),
    snell_cache_mb: int = typer.Option(
        1024, "--snell-cache-mb", min=0, help="torch backend: memory for SNELL tasks' merged weights (LRU)."
    ),
    task_cache_mb: int | None = typer.Option(
        None,
        "--task-cache-mb",
        min=1,
        help="Memory for resident tasks' tensors (least recently used out; default: no limit).",
    ),
    preload: str = typer.Option("", "--preload", help="Comma-separated hot tasks to load before the first batch."),
    engine: str = typer.Option("local", "--engine", help="local (this process), or ray (a Ray Data job)."),
    address: str | None = typer.Option(None, "--address", help="--engine ray: join this cluster (default: local)."),
    ray_actors: int = typer.Option(1, "--ray-actors", min=1, help="--engine ray: runtimes answering at once."),
    actor_cpus: float = typer.Option(1.0, "--actor-cpus", min=0.1, help="--engine ray: CPUs per runtime."),
    actor_gpus: float = typer.Option(0.0, "--actor-gpus", min=0.0, help="--engine ray: GPUs per runtime."),
) -> None:
    """Predict a batch stream mixing many tasks; rows come back in input order. Exit 1 if any row failed."""
    hot = [name.strip() for name in preload.split(",") if name.strip()]
    cache = task_cache_mb << 20 if task_cache_mb is not None else None
    if engine not in ("local", "ray"):
        raise AdapterBankError(f"unknown engine '{engine}': choose local or ray")
    ray_job = None
    if engine == "ray":
        from adapterbank.service.cluster import require_ray

        require_ray()
        from adapterbank.service.batch_job import RayJob

        ray_job = RayJob(address, ray_actors, actor_cpus, actor_gpus)
    with owned_heap(ctx):  # this process serves batch after batch: reuse their memory instead of faulting it in
        _predict(requests, bank, out, backend, batch_size, top_k, snell_cache_mb, cache, hot, ray_job)


def _predict(
    requests: Path,
    bank: Path,
    out: Path | None,
    backend: str,
    batch_size: int,
    top_k: int,
    snell_cache_mb: int,
    task_cache_bytes: int | None,
    preload: list[str],
    ray_job: RayJob | None,
) -> None:
    from adapterbank.runtime import BACKENDS, open_runtime
    from adapterbank.runtime.requests import answer, read_requests

    if backend not in BACKENDS:
        raise AdapterBankError(f"unknown backend '{backend}': choose {' or '.join(BACKENDS)}")
    if out is not None and (out.is_dir() or not out.parent.is_dir()):
        raise AdapterBankError(f"--out '{out}' must name a file in an existing folder")
    rows = read_requests(requests)
    if ray_job is None:
        answers = answer(
            open_runtime(bank, backend, snell_cache_mb << 20, task_cache_bytes, preload), rows, batch_size, top_k
        )
    else:
        from adapterbank.bank.store import Bank
        from adapterbank.service.bank_service import ServiceOptions
        from adapterbank.service.batch_job import answer_on_ray

        Bank(bank).tasks()  # a folder that is not a bank is refused before Ray starts
        options = ServiceOptions(
            backend, snell_cache_bytes=snell_cache_mb << 20, task_cache_bytes=task_cache_bytes, preload=tuple(preload)
        )
        answers = answer_on_ray(bank, rows, options, batch_size, top_k, ray_job)
    try:
        _write(answers, out, len(rows))
    finally:
        if ray_job is not None:
            from adapterbank.service.cluster import disconnect

            disconnect()


def _write(answers: Iterable[Answer], out: Path | None, total: int) -> None:
    failed = 0
    # written beside the target and renamed when complete: a run that dies leaves no truncated answers file
    partial = temporary_path(out) if out else None
    handle = partial.open("w", newline="") if partial else sys.stdout
    try:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        with Progress(console=console, transient=True, disable=out is None) as progress:
            bar = progress.add_task("predicting", total=total)
            for item in answers:
                failed += bool(item.error)
                writer.writerow(
                    [
                        item.path,
                        item.task,
                        ";".join(map(str, item.labels)),
                        ";".join(item.class_names),
                        ";".join(f"{s:.6f}" for s in item.scores),
                        item.error,
                    ]
                )
                progress.advance(bar)
        if partial:
            handle.close()
            publish(partial, out)
    finally:
        if partial:
            handle.close()
            partial.unlink(missing_ok=True)
    if failed:
        typer.echo(f"error: {failed} of {total} requests failed (see the 'error' column)", err=True)
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command()(predict)
