"""`adapterbank serve`: the bank as an HTTP service on Ray Serve, requests of many tasks batched together."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import typer

from adapterbank.errors import AdapterBankError


def serve(
    bank: Path = typer.Option(Path("bank"), "--bank", help="Bank folder (on a cluster: the same path on every node)."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on (0.0.0.0: every interface)."),
    port: int = typer.Option(8000, min=1, max=65535),
    backend: str = typer.Option("torch", help="torch, or onnx (ONNX Runtime)."),
    replicas: int = typer.Option(1, min=1, help="Replicas, each holding a runtime over the bank."),
    min_replicas: int | None = typer.Option(None, min=0, help="With --max-replicas: Ray Serve autoscaling."),
    max_replicas: int | None = typer.Option(None, min=1, help="With --min-replicas: Ray Serve autoscaling."),
    replica_cpus: float = typer.Option(1.0, min=0.1, help="CPUs Ray gives each replica (its compute threads)."),
    replica_gpus: float = typer.Option(0.0, min=0.0, help="GPUs per replica (above 0: the runtime runs on CUDA)."),
    max_batch: int = typer.Option(64, "--max-batch", min=1, help="Most requests answered as one mixed batch."),
    batch_wait_ms: float = typer.Option(5.0, "--batch-wait-ms", min=0.0, help="How long a batch waits to fill."),
    task_cache_mb: int | None = typer.Option(None, "--task-cache-mb", min=1, help="Resident tasks' memory (LRU)."),
    preload: str = typer.Option("", "--preload", help="Comma-separated hot tasks loaded at start."),
    address: str | None = typer.Option(None, "--address", help="Join this Ray cluster (default: a local Ray)."),
    num_cpus: int | None = typer.Option(None, "--num-cpus", min=1, help="CPUs of the local Ray (default: all)."),
) -> None:
    """Serve the bank over HTTP until Ctrl-C: POST /v1/predict, GET /v1/tasks, GET /healthz (docs/serving.md)."""
    from adapterbank.service.cluster import require_ray

    require_ray()
    from adapterbank.bank.store import Bank
    from adapterbank.runtime import BACKENDS
    from adapterbank.service.app import Scaling
    from adapterbank.service.bank_service import ServiceOptions
    from adapterbank.service.cluster import start_service, stop_service

    if backend not in BACKENDS:
        raise AdapterBankError(f"unknown backend '{backend}': choose {' or '.join(BACKENDS)}")
    if (min_replicas is None) != (max_replicas is None):
        raise AdapterBankError("autoscaling needs both --min-replicas and --max-replicas")
    if min_replicas is not None and max_replicas is not None and min_replicas > max_replicas:
        raise AdapterBankError(f"--min-replicas {min_replicas} is above --max-replicas {max_replicas}")
    store = Bank(bank)
    count = len(store.tasks())  # also refuses a folder that is not a bank, before Ray starts
    hot = tuple(name.strip() for name in preload.split(",") if name.strip())
    options = ServiceOptions(backend, task_cache_bytes=task_cache_mb << 20 if task_cache_mb else None, preload=hot)
    scaling = Scaling(replicas, min_replicas, max_replicas, replica_cpus, replica_gpus)
    stop = threading.Event()
    try:
        url = start_service(store.path, host, port, options, scaling, max_batch, batch_wait_ms, address, num_cpus)
        # after Ray's start-up, which installs its own SIGTERM handler; Ctrl-C during start-up interrupts it
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        typer.echo(f"serving {count} tasks of {store.path} at {url} with {backend} (Ctrl-C stops)")
        stop.wait()
    finally:
        stop_service()


def register(app: typer.Typer) -> None:
    app.command()(serve)
