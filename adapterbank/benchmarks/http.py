"""`adapterbank bench http`: the HTTP service under N concurrent clients, each sending single-image requests for
its own task, with cross-task batching against the same service answering one task at a time (its batches split
by task: what a server without mixed-task batching does). Both run in one process on one local Ray, one after the
other (the application is redeployed between them), with the same clients, images and tasks.

Targets (docs/benchmarks.md#targets): cross-task >= 2x the throughput of one-task-at-a-time at 16 clients, and its
p99 latency <= 2x its p50.
"""

from __future__ import annotations

import base64
import copy
import http.client
import io
import json
import socket
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from adapterbank.backbones import create_backbone
from adapterbank.bank.torch_bridge import commit, create_bank, task_record
from adapterbank.inspection import perturb_task_parameters
from adapterbank.service.bank_service import ServiceOptions
from adapterbank.service.cluster import start_service, stop_service
from adapterbank.tuned import TunedModel
from adapterbank.weight_specs import resolve_weights

MODES = {"cross-task": True, "one task at a time": False}


@dataclass
class HttpRow:
    backbone: str
    clients: int
    mode: str
    images_per_s: float
    p50_ms: float
    p99_ms: float
    answered: int


def fill_bank(folder: Path, arch: str, checkpoint: str | None, method: str, tasks: int, size: int) -> list[str]:
    """`tasks` tasks of `method` trained (in name only) at `size` px, tensors moved off their init."""
    weights = resolve_weights(checkpoint, arch)
    backbone = create_backbone(arch, weights.path, weights.pretrained)
    bank = create_bank(folder, backbone, arch, weights.label)
    names = []
    for i in range(tasks):
        model = TunedModel(copy.deepcopy(backbone), arch, method, [10], None, bank.identity.fingerprint)
        perturb_task_parameters(model, seed=i)
        names.append(f"{method}-{i}")
        commit(bank, task_record(model, names[-1], training={"image_size": size, "augment": "none"}))
    return names


def photos(count: int, size: int) -> list[str]:
    """Encoded JPEGs (base64), as a client sends them: smooth random images, one per client."""
    rng = np.random.default_rng(0)
    out = []
    for _ in range(count):
        small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        image = Image.fromarray(small).resize((size, size), Image.Resampling.BICUBIC)
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=90)
        out.append(base64.b64encode(buffer.getvalue()).decode())
    return out


def _client(port: int, body: bytes, warmup_end: float, stop: float, latencies: list[float], errors: list) -> None:
    """One client in a closed loop on a keep-alive connection; latencies of requests sent after the warm-up."""
    try:
        _requests(port, body, warmup_end, stop, latencies)
    except Exception as exc:  # re-raised by `measure`: a failed client must not leave a rate of the others
        errors.append(exc)


def _requests(port: int, body: bytes, warmup_end: float, stop: float, latencies: list[float]) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    headers = {"Content-Type": "application/json"}
    while (now := time.perf_counter()) < stop or not latencies:  # at least one measured request per client
        connection.request("POST", "/v1/predict", body, headers)
        response = connection.getresponse()
        payload = response.read()
        if response.status != 200:
            raise RuntimeError(f"the service answered {response.status}: {payload[:200]!r}")
        if now >= warmup_end:
            latencies.append(time.perf_counter() - now)
    connection.close()


def measure(port: int, names: Sequence[str], images: Sequence[str], clients: int, seconds: float) -> tuple[float, list]:
    """images/s and the latencies of `clients` concurrent clients, client i asking for task i mod len(names)."""
    bodies = [
        json.dumps({"task": names[i % len(names)], "image": images[i % len(images)]}).encode() for i in range(clients)
    ]
    start = time.perf_counter()
    warmup_end, stop = start + min(2.0, seconds / 4), start + min(2.0, seconds / 4) + seconds
    per_client: list[list[float]] = [[] for _ in range(clients)]
    errors: list[Exception] = []
    threads = [
        threading.Thread(target=_client, args=(port, bodies[i], warmup_end, stop, per_client[i], errors))
        for i in range(clients)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise RuntimeError(f"{len(errors)} of {clients} clients failed: {errors[0]}") from errors[0]
    latencies = [value for values in per_client for value in values]
    return len(latencies) / max(seconds, time.perf_counter() - warmup_end), latencies


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def http_benchmark(
    arch: str,
    checkpoint: str | None,
    method: str = "ssf",
    tasks: int = 8,
    clients: Sequence[int] = (1, 4, 8, 16),
    seconds: float = 10.0,
    size: int = 224,
    max_batch: int = 64,
    batch_wait_ms: float = 5.0,
    backend: str = "torch",
    replica_cpus: float = 1.0,
    num_cpus: int | None = None,
) -> list[HttpRow]:
    from adapterbank.service.app import Scaling

    rows = []
    with tempfile.TemporaryDirectory() as folder:
        names = fill_bank(Path(folder) / "bank", arch, checkpoint, method, tasks, size)
        images = photos(max(clients), size)
        port = free_port()
        try:
            for mode, cross_task in MODES.items():
                options = ServiceOptions(backend, cross_task=cross_task, preload=tuple(names))
                scaling = Scaling(replica_cpus=replica_cpus)
                start_service(
                    Path(folder) / "bank", port=port, options=options, scaling=scaling, max_batch=max_batch,
                    batch_wait_ms=batch_wait_ms, num_cpus=num_cpus,
                )  # fmt: skip
                for count in clients:
                    rate, latencies = measure(port, names, images, count, seconds)
                    p50, p99 = (float(np.percentile(latencies, q)) * 1000 for q in (50, 99))
                    rows.append(HttpRow(arch, count, mode, rate, p50, p99, len(latencies)))
        finally:
            stop_service()
    return rows
