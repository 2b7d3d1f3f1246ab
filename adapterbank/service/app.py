"""`adapterbank serve`: a Ray Serve application over a bank. Requests of many clients and many tasks are collected
by Ray Serve's own batching (`serve.batch`) and answered as one mixed batch by `BankService`.

Each replica holds one runtime over the bank (the bank folder must be readable at the same path on every node: a
shared filesystem). Errors of a request are a 4xx with a one-line JSON body and never reach the other requests of
its batch.
"""

import asyncio
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve

from adapterbank.allocator import keep_freed_memory
from adapterbank.runtime.requests import Prediction
from adapterbank.service.bank_service import BankService, DecodedRequest, ServiceOptions
from adapterbank.service.protocol import MAX_BODY_BYTES, BadRequest, parse_predict_body, prediction_json

api = FastAPI(title="adapterbank", docs_url=None, redoc_url=None, openapi_url=None)
APP_NAME = "adapterbank"


@dataclass(frozen=True)
class Scaling:
    replicas: int = 1
    min_replicas: int | None = None  # both set: Ray Serve autoscaling between them instead of `replicas`
    max_replicas: int | None = None
    replica_cpus: float = 1.0  # Ray gives each replica this many CPUs (torch and ONNX Runtime threads follow)
    replica_gpus: float = 0.0  # above 0: the replica's runtime runs on CUDA


async def _bounded_body(request: Request) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise BadRequest(f"request body over {MAX_BODY_BYTES >> 20} MiB", 413)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise BadRequest(f"request body over {MAX_BODY_BYTES >> 20} MiB", 413)
        chunks.append(chunk)
    return b"".join(chunks)


def _error(exc: BadRequest) -> JSONResponse:
    return JSONResponse({"error": str(exc).splitlines()[0] if str(exc) else "bad request"}, status_code=exc.status)


@serve.deployment(max_ongoing_requests=256)
@serve.ingress(api)
class BankServer:
    def __init__(self, bank: str, options: ServiceOptions, max_batch: int, batch_wait_s: float) -> None:
        keep_freed_memory()  # a replica is a process of its own answering batch after batch (docs/serving.md#allocator)
        self.service = BankService(bank, options)
        self.answer_batch.set_max_batch_size(max_batch)
        self.answer_batch.set_batch_wait_timeout_s(batch_wait_s)

    @api.get("/healthz")
    async def healthz(self) -> dict[str, Any]:
        return {"status": "ok"}

    @api.get("/v1/tasks")
    async def tasks(self) -> dict[str, Any]:
        return {"tasks": await asyncio.to_thread(self.service.tasks)}

    @api.get("/v1/tasks/{name}")
    async def task(self, name: str) -> JSONResponse:
        try:
            return JSONResponse(await asyncio.to_thread(self.service.describe, name))
        except BadRequest as exc:
            return _error(exc)

    @api.post("/v1/predict")
    async def predict(self, request: Request) -> JSONResponse:
        try:
            body = await _bounded_body(request)
            parsed, listed = parse_predict_body(body)
            decoded = await asyncio.to_thread(lambda: [self.service.check(item) for item in parsed])
            predictions: list[Prediction] = await asyncio.gather(*(self.answer_batch(item) for item in decoded))
            failed = next((p for p in predictions if p.error), None)
            if failed is not None:
                raise BadRequest(failed.error, 422)
        except BadRequest as exc:
            return _error(exc)
        answers = [
            prediction_json(item.task, item.top_k, p.labels, p.class_names, p.scores)
            for item, p in zip(decoded, predictions, strict=True)
        ]
        return JSONResponse({"predictions": answers} if listed else answers[0])

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.005, max_concurrent_batches=1)
    async def answer_batch(self, batch: list[DecodedRequest]) -> list[Prediction]:
        # off the event loop, so requests keep arriving (and the next batch forming) while this one computes
        return await asyncio.to_thread(self.service.answer, batch)


def build_app(
    bank: str | Path,
    options: ServiceOptions | None = None,
    scaling: Scaling | None = None,
    max_batch: int = 64,
    batch_wait_ms: float = 5.0,
) -> serve.Application:
    """The application `serve.run` starts: replicas (or an autoscaling range) of BankServer over `bank`."""
    options, scaling = options or ServiceOptions(), scaling or Scaling()
    actor = {"num_cpus": scaling.replica_cpus, "num_gpus": scaling.replica_gpus}
    if scaling.replica_gpus > 0 and options.backend == "torch":
        options = replace(options, device="cuda")
    deployment = BankServer.options(ray_actor_options=actor, max_ongoing_requests=max(256, 4 * max_batch))
    if scaling.min_replicas is not None and scaling.max_replicas is not None:
        autoscaling = {"min_replicas": scaling.min_replicas, "max_replicas": scaling.max_replicas}
        deployment = deployment.options(autoscaling_config=autoscaling)
    else:
        deployment = deployment.options(num_replicas=scaling.replicas)
    return deployment.bind(str(Path(bank).resolve()), options, max_batch, batch_wait_ms / 1000.0)
