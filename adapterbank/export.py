"""Export banked tasks as ONNX graphs: merged into the backbone's own weights (zero overhead) when the method
merges, with a parity check in ONNX Runtime against the unmerged PyTorch model and a manifest beside the graph.

Files appear whole: graph and manifest are written under temporary names and renamed once the parity check passed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import uuid
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from adapterbank.bank.models import load_tasks
from adapterbank.bank.store import Bank, TaskRecord
from adapterbank.errors import AdapterBankError
from adapterbank.ort_sessions import session
from adapterbank.tuned import TunedModel

MIN_OPSET = 17
DEFAULT_OPSET = 18
FP32_TOLERANCE = 1e-4
# fp16 keeps 11 significant bits (unit roundoff 2^-11 = 4.9e-4). Through a deep network we measured 0.7e-3 (ViT)
# to 3.4e-3 (EfficientNet-Lite0, folded BatchNorm) max abs logit error at logit scale <= 1: we allow 1e-2 of
# the logit scale, ~20 unit roundoffs, about 3x the worst case seen.
FP16_RELATIVE_TOLERANCE = 1e-2
MULTI_TASK_METHODS = ("ssf", "bitfit", "lora", "linear", "adapter", "prefix", "prompt", "utuning")


@dataclass
class ExportResult:
    graph: Path
    manifest: Path
    parity_error: float
    info: dict[str, Any]


class MultiTaskGraph(nn.Module):
    """(images, task_id) -> logits padded to the largest task with -inf: what the multi-task ONNX graph computes."""

    def __init__(self, model: TunedModel) -> None:
        super().__init__()
        self.tuned = model

    def forward(self, images: torch.Tensor, task_id: torch.Tensor) -> torch.Tensor:
        with self.tuned.router.route(task_id):
            return self.tuned.model(images)


def parity_batch(bank: Bank, batch: int, seed: int = 0) -> torch.Tensor:
    """A fixed batch in the backbone's input range (normalised noise), the same on every run."""
    return torch.randn(batch, *bank.identity.input_size, generator=torch.Generator().manual_seed(seed))


def graph_stats(path: str | Path) -> dict[str, Any]:
    """Operator counts and initializer sizes: what must match the bare backbone's graph for zero overhead."""
    graph = onnx.load(str(path)).graph
    ops: dict[str, int] = {}
    for node in graph.node:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
    sizes = sorted(int(np.prod(init.dims)) for init in graph.initializer)
    return {"ops": dict(sorted(ops.items())), "initializer_sizes": sizes, "initializer_values": sum(sizes)}


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_opset(opset: int) -> None:
    if opset < MIN_OPSET:
        raise AdapterBankError(f"opset {opset} is too old: use {MIN_OPSET} or newer")


def prepare_out_dir(out: Path) -> None:
    """Create the folder and prove it writable before any work, so failures come first and leave nothing."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{uuid.uuid4().hex[:8]}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise AdapterBankError(f"output folder '{out}' is not writable: {exc.strerror or exc}") from exc


@contextlib.contextmanager
def temporary_paths(out: Path, *names: str) -> Iterator[list[Path]]:
    paths = [out / f".{name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}" for name in names]
    try:
        yield paths
    finally:
        for path in paths:
            path.unlink(missing_ok=True)


def to_onnx(module: nn.Module, inputs: tuple[torch.Tensor, ...], names: Sequence[str], path: Path, opset: int) -> None:
    """torch.onnx.export (torch.export-based) with a dynamic batch axis on every input.

    Traced with at least two samples: torch.export specialises a size-1 dimension, which would pin the batch.
    """
    batch = torch.export.Dim("batch", min=1, max=65536)
    inputs = tuple(t if t.shape[0] >= 2 else t.repeat(2, *([1] * (t.ndim - 1))) for t in inputs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # exporter chatter (shared axis names, deprecations) is not for users
        try:
            torch.onnx.export(
                module,
                inputs,
                str(path),
                input_names=list(names),
                output_names=["logits"],
                opset_version=opset,
                dynamic_shapes=tuple({0: batch} for _ in inputs),
                dynamo=True,
                external_data=False,
                verbose=False,
            )
        except Exception as exc:
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            raise AdapterBankError(f"ONNX export failed: {first}") from exc


def to_fp16(path: Path) -> None:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    onnx.save(convert_float_to_float16(onnx.load(str(path)), keep_io_types=True), str(path))


def run_graph(path: Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    return session(path).run(["logits"], feeds)[0]


def check_parity(actual: np.ndarray, expected: np.ndarray, fp16: bool, what: str) -> float:
    finite = np.isfinite(expected)
    if not np.array_equal(finite, np.isfinite(actual)):
        raise AdapterBankError(f"{what}: the graph's -inf/NaN pattern differs from PyTorch's")
    error = float(np.abs(actual[finite] - expected[finite]).max(initial=0.0))
    scale = float(np.abs(expected[finite]).max(initial=0.0))
    tolerance = FP16_RELATIVE_TOLERANCE * max(1.0, scale) if fp16 else FP32_TOLERANCE
    if error > tolerance:
        raise AdapterBankError(
            f"{what}: ONNX Runtime logits differ from PyTorch by {error:.3g} (tolerance {tolerance:.3g}); "
            f"nothing written"
        )
    return error


def preprocessing(bank: Bank) -> dict[str, Any]:
    i = bank.identity
    return {
        "input_size": list(i.input_size),
        "mean": list(i.mean),
        "std": list(i.std),
        "interpolation": i.interpolation,
        "crop_pct": i.crop_pct,
    }


def _publish(graph_tmp: Path, manifest_tmp: Path, graph: Path, manifest: Path, info: dict[str, Any]) -> dict[str, Any]:
    info = {**info, "graph": graph.name, "sha256": sha256_file(graph_tmp)}
    manifest_tmp.write_text(json.dumps(info, indent=2))
    os.replace(graph_tmp, graph)
    os.replace(manifest_tmp, manifest)
    return info


def export_task(
    bank: Bank, task: str, out: str | Path = "exports", fp16: bool = False, opset: int = DEFAULT_OPSET, batch: int = 2
) -> ExportResult:
    """One task as one graph: merged when the method merges, else the tuned model with its extra ops."""
    check_opset(opset)
    out = Path(out)
    model, [record] = load_tasks(bank, [task])
    prepare_out_dir(out)
    images = parity_batch(bank, batch)
    with torch.no_grad():
        expected = model(images).numpy()
    merged = model.method.mergeable
    graph_module = model.merge(0) if merged else model
    graph, manifest = out / f"{task}.onnx", out / f"{task}.json"
    with temporary_paths(out, graph.name, manifest.name) as (graph_tmp, manifest_tmp):
        to_onnx(graph_module, (images,), ["images"], graph_tmp, opset)
        if fp16:
            to_fp16(graph_tmp)
        error = check_parity(run_graph(graph_tmp, {"images": images.numpy()}), expected, fp16, f"task '{task}'")
        info = _publish(
            graph_tmp,
            manifest_tmp,
            graph,
            manifest,
            {
                **_task_info(record),
                "backbone": bank.identity.arch,
                "fingerprint": bank.identity.fingerprint,
                "preprocessing": preprocessing(bank),
                "opset": opset,
                "precision": "fp16" if fp16 else "fp32",
                "merged": merged,
                "extra_ops": [] if merged else model.method.extra_ops(model.config),
                "inputs": {"images": ["batch", *bank.identity.input_size]},
                "parity_max_abs_error": error,
                "parity_batch": batch,
            },
        )
    return ExportResult(graph, manifest, error, info)


def _task_info(record: TaskRecord) -> dict[str, Any]:
    return {"task": record.name, "method": record.method, "classes": record.class_names}


def export_multi_task(
    bank: Bank,
    tasks: Sequence[str],
    name: str,
    out: str | Path = "exports",
    fp16: bool = False,
    opset: int = DEFAULT_OPSET,
    batch: int = 4,
) -> ExportResult:
    """Several tasks of one method in one graph; a per-sample `task_id` input picks each sample's parameters."""
    check_opset(opset)
    out = Path(out)
    if not tasks:
        raise AdapterBankError("no tasks to export")
    methods = {t: bank.load(t, with_tensors=False).method for t in tasks}
    refused = sorted({m for m in methods.values() if m not in MULTI_TASK_METHODS})
    if refused:
        raise AdapterBankError(
            f"a multi-task graph cannot express method(s) {', '.join(refused)} (it gathers per-sample tensors for "
            f"{', '.join(MULTI_TASK_METHODS)}); export those tasks one by one"
        )
    if len(set(methods.values())) > 1:
        groups = ", ".join(
            f"{m}: {', '.join(t for t in tasks if methods[t] == m)}" for m in sorted(set(methods.values()))
        )
        raise AdapterBankError(f"one multi-task graph holds one method; these tasks mix methods ({groups})")
    model, records = load_tasks(bank, tasks)
    prepare_out_dir(out)
    images = parity_batch(bank, batch)
    task_id = torch.arange(batch) % len(tasks)
    graph_module = MultiTaskGraph(model).eval()
    with torch.no_grad():
        expected = graph_module(images, task_id).numpy()
    graph, manifest = out / f"{name}.onnx", out / f"{name}.json"
    with temporary_paths(out, graph.name, manifest.name) as (graph_tmp, manifest_tmp):
        to_onnx(graph_module, (images, task_id), ["images", "task_id"], graph_tmp, opset)
        if fp16:
            to_fp16(graph_tmp)
        feeds = {"images": images.numpy(), "task_id": task_id.numpy()}
        error = check_parity(run_graph(graph_tmp, feeds), expected, fp16, f"multi-task graph '{name}'")
        info = _publish(
            graph_tmp,
            manifest_tmp,
            graph,
            manifest,
            {
                "multi_task": True,
                "tasks": [{**_task_info(r), "task_id": i} for i, r in enumerate(records)],
                "method": records[0].method,
                "backbone": bank.identity.arch,
                "fingerprint": bank.identity.fingerprint,
                "preprocessing": preprocessing(bank),
                "opset": opset,
                "precision": "fp16" if fp16 else "fp32",
                "merged": False,
                "extra_ops": ["per-sample gather of task tensors"],
                "inputs": {"images": ["batch", *bank.identity.input_size], "task_id": ["batch"]},
                "outputs": {"logits": ["batch", max(len(r.class_names) for r in records)]},
                "parity_max_abs_error": error,
                "parity_batch": batch,
            },
        )
    return ExportResult(graph, manifest, error, info)
