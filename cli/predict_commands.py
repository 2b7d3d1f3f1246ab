"""`adapterbank predict`: a CSV of (image, task) requests answered in mixed-task batches."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import typer
from rich.progress import Progress

from adapterbank.atomic_files import publish, temporary_path
from adapterbank.errors import AdapterBankError
from cli.output import console

COLUMNS = ["path", "task", "label", "class_name", "score", "error"]


def predict(
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
) -> None:
    """Predict a batch stream mixing many tasks; rows come back in input order. Exit 1 if any row failed."""
    from adapterbank.process import serving_process

    hot = [name.strip() for name in preload.split(",") if name.strip()]
    cache = task_cache_mb << 20 if task_cache_mb is not None else None
    with serving_process():  # this process serves batch after batch: reuse their memory instead of faulting it in
        _predict(requests, bank, out, backend, batch_size, top_k, snell_cache_mb, cache, hot)


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
) -> None:
    from adapterbank.runtime import BACKENDS, open_runtime
    from adapterbank.runtime.requests import answer, read_requests

    if backend not in BACKENDS:
        raise AdapterBankError(f"unknown backend '{backend}': choose {' or '.join(BACKENDS)}")
    if out is not None and (out.is_dir() or not out.parent.is_dir()):
        raise AdapterBankError(f"--out '{out}' must name a file in an existing folder")
    rows = read_requests(requests)
    runtime = open_runtime(bank, backend, snell_cache_mb << 20, task_cache_bytes, preload)
    failed = 0
    # written beside the target and renamed when complete: a run that dies leaves no truncated answers file
    partial = temporary_path(out) if out else None
    handle = partial.open("w", newline="") if partial else sys.stdout
    try:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        with Progress(console=console, transient=True, disable=out is None) as progress:
            bar = progress.add_task("predicting", total=len(rows))
            for item in answer(runtime, rows, batch_size, top_k):
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
        typer.echo(f"error: {failed} of {len(rows)} requests failed (see the 'error' column)", err=True)
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command()(predict)
