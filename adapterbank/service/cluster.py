"""Ray itself: a local Ray started in this process (the embedded default) or an existing cluster joined by address,
and the HTTP service started on it and stopped with it."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from adapterbank.errors import AdapterBankError
from adapterbank.service.bank_service import ServiceOptions

if TYPE_CHECKING:
    from adapterbank.service.app import Scaling

LOCAL_OBJECT_STORE_BYTES = 256 << 20  # requests and answers are small; Ray's default takes 30% of the memory
_started_here: list[bool] = []  # whether this process started the Ray it is connected to (then it stops it)


def require_ray() -> None:
    """Ray is an extra: say how to install it in one line instead of an ImportError."""
    try:
        import ray
        import ray.data
        import ray.serve  # noqa: F401
    except ImportError as exc:
        raise AdapterBankError(
            f"serving on Ray needs `pip install 'adapterbank[serve]'` (ray[serve,data]==2.60.0): {exc}"
        ) from exc


def connect(address: str | None = None, num_cpus: int | None = None) -> None:
    """Join the cluster at `address` ('auto' finds a local one), or start a local Ray with `num_cpus` (default: all)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage reports from an offline machine
    require_ray()
    import ray

    if ray.is_initialized():
        return
    _started_here[:] = [not address]
    quiet = {"include_dashboard": False, "logging_level": logging.ERROR, "log_to_driver": False}
    try:
        if address:
            ray.init(address=address, **quiet)
        else:
            ray.init(num_cpus=num_cpus, object_store_memory=LOCAL_OBJECT_STORE_BYTES, **quiet)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"the Ray cluster at '{address}'" if address else "a local Ray"
        raise AdapterBankError(f"cannot start or join {where}: {str(exc).splitlines()[0][:200]}") from exc


def start_service(
    bank: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    options: ServiceOptions | None = None,
    scaling: Scaling | None = None,
    max_batch: int = 64,
    batch_wait_ms: float = 5.0,
    address: str | None = None,
    num_cpus: int | None = None,
) -> str:
    """Start (or update) the service on Ray; returns its base URL once every replica is up."""
    from ray import serve

    from adapterbank.service.app import APP_NAME, Scaling, build_app

    connect(address, num_cpus)
    logging.getLogger("ray.serve").setLevel(logging.WARNING)  # start-up chatter is not for users
    serve.start(http_options={"host": host, "port": port}, logging_config={"log_level": "ERROR"})
    scaling = scaling or Scaling()
    if _started_here == [True]:
        _check_room(scaling)
    app = build_app(bank, options, scaling, max_batch, batch_wait_ms)
    try:
        serve.run(app, name=APP_NAME, route_prefix="/", blocking=False)
    except Exception as exc:  # Ray's deployment errors carry the replica's traceback: its first line is the news
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise AdapterBankError(f"the service did not start: {first}") from exc
    return f"http://{host}:{port}"


def _check_room(scaling: Scaling) -> None:
    """On a local Ray, replicas that cannot be placed would be waited for forever: refuse them in one line."""
    import ray

    have = ray.cluster_resources()
    count = scaling.min_replicas if scaling.min_replicas is not None else scaling.replicas
    for kind, per_replica in (("CPU", scaling.replica_cpus), ("GPU", scaling.replica_gpus)):
        if count * per_replica > have.get(kind, 0.0):
            raise AdapterBankError(
                f"{count} replica(s) x {per_replica:g} {kind} do not fit this machine's Ray ({have.get(kind, 0.0):g} "
                f"{kind}): lower --replicas or --replica-{kind.lower()}s, or join a cluster with --address"
            )


def stop_service() -> None:
    """Stop the service: with the Ray this process started (no processes are left behind), or, on a cluster it
    joined, only this application."""
    import ray
    from ray import serve

    from adapterbank.service.app import APP_NAME

    if not ray.is_initialized():
        return
    if _started_here == [True]:
        serve.shutdown()
    else:
        serve.delete(APP_NAME)
    disconnect()


def disconnect() -> None:
    """Leave the Ray that connect() started or joined: a local one stops with it, a cluster only loses this driver.
    A Ray the caller had started itself is left as it is."""
    import ray

    if _started_here:  # connected by connect(), not by the caller
        ray.shutdown()
    _started_here.clear()
