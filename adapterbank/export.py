"""Export banked tasks as ONNX graphs: merged into the backbone's own weights (zero overhead) when the method
merges, with a parity check in ONNX Runtime against the unmerged PyTorch model and a manifest beside the graph.

Files appear whole: graph and manifest are written under temporary names and renamed once the parity check passed.
"""

from __future__ import annotations

import hashlib
import json
import uuid
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from adapterbank.anatomy import has_fixed_input_size
from adapterbank.atomic_files import publish, temporaries
from adapterbank.backbones import adapt_input_size
from adapterbank.bank.store import Bank, TaskRecord, valid_task_name
from adapterbank.bank.torch_bridge import load_backbone, load_record, load_tasks
from adapterbank.data.preprocessing import Preprocessing, task_preprocessing
from adapterbank.errors import AdapterBankError
from adapterbank.methods import METHODS
from adapterbank.methods.base import task_modules
from adapterbank.ort_sessions import session
from adapterbank.tuned import TunedModel

MIN_OPSET = 18  # torch's exporter writes opset 18 at the least: an older request would be mislabelled
DEFAULT_OPSET = 18
FP32_TOLERANCE = 1e-4
# fp16 keeps 11 significant bits (unit roundoff 2^-11 = 4.9e-4). Through a deep network we measured 0.7e-3 (ViT)
# to 3.4e-3 (EfficientNet-Lite0, folded BatchNorm) max abs logit error at logit scale <= 1: we allow 1e-2 of
# the logit scale, ~20 unit roundoffs, about 3x the worst case seen.
FP16_RELATIVE_TOLERANCE = 1e-2
MULTI_TASK_METHODS = tuple(name for name, method in METHODS.items() if method.multi_task_graph)


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


class StackedTaskGraph(nn.Module):
    """(images, task_id, *stacks) -> logits padded with -inf: every task tensor is an input, stacked along a leading
    task axis (the head's also along a class axis), so one graph serves any tasks of its method, config and image
    size. A runtime loads a task by writing its tensors into the stacks it feeds: no export per task."""

    def __init__(self, model: TunedModel) -> None:
        super().__init__()
        self.tuned = model
        self.keys = stacked_keys(model)

    def forward(self, images: torch.Tensor, task_id: torch.Tensor, *stacks: torch.Tensor) -> torch.Tensor:
        with self.tuned.router.route(task_id):
            return torch.func.functional_call(self.tuned.model, dict(zip(self.keys, stacks, strict=True)), (images,))


def stacked_keys(model: TunedModel) -> list[str]:
    """The stacked graph's tensor inputs in order: every task tensor (named as the bank stores it), then the head's
    mask of valid classes."""
    keys = [f"{path}.{name}" for path, m in task_modules(model.model) for name, _ in m.named_parameters(recurse=False)]
    return [*keys, f"{model.head_path}.valid"]


def parity_batch(size: int, batch: int, seed: int = 0) -> torch.Tensor:
    """A fixed batch of size x size images in the normalised input range (noise), the same on every run."""
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


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


def to_onnx(
    module: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    names: Sequence[str],
    path: Path,
    opset: int,
    dynamic_shapes: tuple | None = None,
) -> None:
    """torch.onnx.export (torch.export-based) with a dynamic batch axis on every input (or `dynamic_shapes`).

    Traced with at least two samples: torch.export specialises a size-1 dimension, which would pin the batch.
    """
    batch = torch.export.Dim("batch", min=1, max=65536)
    if dynamic_shapes is None:
        inputs = tuple(t if t.shape[0] >= 2 else t.repeat(2, *([1] * (t.ndim - 1))) for t in inputs)
        dynamic_shapes = tuple({0: batch} for _ in inputs)
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
                dynamic_shapes=dynamic_shapes,
                dynamo=True,
                external_data=False,
                verbose=False,
            )
        except Exception as exc:
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            raise AdapterBankError(f"ONNX export failed: {first}") from exc


def check_written_opset(path: Path, opset: int) -> None:
    """The graph holds the opset the manifest will name, or the export stops."""
    written = next(
        (o.version for o in onnx.load(str(path), load_external_data=False).opset_import if o.domain in ("", "ai.onnx")),
        None,
    )
    if written != opset:
        raise AdapterBankError(f"the exporter wrote opset {written}, not the requested {opset}: pass --opset {written}")


def to_fp16(path: Path) -> None:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    onnx.save(convert_float_to_float16(onnx.load(str(path)), keep_io_types=True), str(path))


def run_graph(path: Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    return session(path).run(["logits"], feeds)[0]


def check_graph_name(name: str) -> None:
    if not valid_task_name(name):
        raise AdapterBankError(f"graph name '{name}' must be letters, digits, '.', '_' and '-' (no path separators)")


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


def resolution(bank: Bank, model: TunedModel, size: int) -> dict[str, Any]:
    """What the graph's input size means: fixed at the task's size, and whether the backbone itself is."""
    native = bank.identity.input_size[-1]
    if not has_fixed_input_size(model.model):
        backbone = f"convolutional: the weights take any size; this graph is traced at {size} px"
    elif size == native:
        backbone = f"position embeddings at their pretrained {native} px"
    else:
        backbone = f"position embeddings resampled from {native} to {size} px (timm set_input_size, bicubic)"
    return {"size": size, "graph_input": "fixed", "backbone": backbone}


def _publish(graph_tmp: Path, manifest_tmp: Path, graph: Path, manifest: Path, info: dict[str, Any]) -> dict[str, Any]:
    info = {**info, "graph": graph.name, "sha256": sha256_file(graph_tmp)}
    manifest_tmp.write_text(json.dumps(info, indent=2))
    publish(graph_tmp, graph)
    publish(manifest_tmp, manifest)
    return info


def export_task(
    bank: Bank,
    task: str,
    out: str | Path = "exports",
    fp16: bool = False,
    opset: int = DEFAULT_OPSET,
    batch: int = 2,
    verify: VerifyData | None = None,
    name: str | None = None,
) -> ExportResult:
    """One task as one graph at the task's own resolution: merged when the method merges, else the tuned model
    with its extra ops, written as NAME.onnx and NAME.json (NAME: the task's, unless `name`). With `verify`, the
    graph is run on real images first (see `verify_export`)."""
    check_opset(opset)
    name = name or task
    check_graph_name(name)
    out = Path(out)
    model, [record] = load_tasks(bank, [task])
    contract = task_preprocessing(record.training, bank.identity)
    samples = verify.samples(record) if verify is not None else None  # bad data fails before the export work
    prepare_out_dir(out)
    images = parity_batch(contract.size, batch)
    with torch.no_grad():
        expected = model(images).numpy()
    merged = model.method.mergeable
    graph_module = model.merge(0) if merged else model
    graph, manifest = out / f"{name}.onnx", out / f"{name}.json"
    with temporaries(graph, manifest) as (graph_tmp, manifest_tmp):
        to_onnx(graph_module, (images,), ["images"], graph_tmp, opset)
        check_written_opset(graph_tmp, opset)
        if fp16:
            to_fp16(graph_tmp)
        error = check_parity(run_graph(graph_tmp, {"images": images.numpy()}), expected, fp16, f"task '{task}'")
        info = {
            **_task_info(record),
            "backbone": bank.identity.arch,
            "fingerprint": bank.identity.fingerprint,
            "preprocessing": contract.manifest(),
            "resolution": resolution(bank, model, contract.size),
            "opset": opset,
            "precision": "fp16" if fp16 else "fp32",
            "merged": merged,
            "extra_ops": [] if merged else model.method.extra_ops(model.config),
            "inputs": {"images": ["batch", 3, contract.size, contract.size]},
            "parity_max_abs_error": error,
            "parity_batch": batch,
        }
        if verify is not None:
            info["verified"] = verify_export(graph_tmp, info, model, contract, verify, samples)
        info = _publish(graph_tmp, manifest_tmp, graph, manifest, info)
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
    check_graph_name(name)
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
    contracts = [task_preprocessing(bank.load(t, with_tensors=False).training, bank.identity) for t in tasks]
    sizes = sorted({c.size for c in contracts})
    if len(sizes) > 1:
        listed = ", ".join(f"{t}: {c.size} px" for t, c in zip(tasks, contracts, strict=True))
        raise AdapterBankError(
            f"one multi-task graph has one input size; these tasks differ ({listed}): export them in groups of one size"
        )
    model, records = load_tasks(bank, tasks)
    prepare_out_dir(out)
    images = parity_batch(sizes[0], batch)
    task_id = torch.arange(batch) % len(tasks)
    graph_module = MultiTaskGraph(model).eval()
    with torch.no_grad():
        expected = graph_module(images, task_id).numpy()
    graph, manifest = out / f"{name}.onnx", out / f"{name}.json"
    with temporaries(graph, manifest) as (graph_tmp, manifest_tmp):
        to_onnx(graph_module, (images, task_id), ["images", "task_id"], graph_tmp, opset)
        check_written_opset(graph_tmp, opset)
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
                "tasks": [
                    {**_task_info(r), "task_id": i, "preprocessing": c.manifest()}
                    for i, (r, c) in enumerate(zip(records, contracts, strict=True))
                ],
                "method": records[0].method,
                "backbone": bank.identity.arch,
                "fingerprint": bank.identity.fingerprint,
                # one contract for all when the tasks agree; else each task's entry holds its own
                "preprocessing": contracts[0].manifest() if len(set(contracts)) == 1 else None,
                "resolution": resolution(bank, model, sizes[0]),
                "opset": opset,
                "precision": "fp16" if fp16 else "fp32",
                "merged": False,
                "extra_ops": ["per-sample gather of task tensors"],
                "inputs": {"images": ["batch", 3, sizes[0], sizes[0]], "task_id": ["batch"]},
                "outputs": {"logits": ["batch", max(len(r.class_names) for r in records)]},
                "parity_max_abs_error": error,
                "parity_batch": batch,
            },
        )
    return ExportResult(graph, manifest, error, info)


STACKED_FORMAT = 1  # bump when StackedTaskGraph's inputs change: cached graphs of another format are rebuilt


def stacked_graph_name(bank: Bank, record: TaskRecord, opset: int = DEFAULT_OPSET) -> str:
    """The cache name of the stacked graph serving `record`'s kind (method, config, image size) on this backbone."""
    size = task_preprocessing(record.training, bank.identity).size
    kind = [STACKED_FORMAT, bank.identity.fingerprint, record.method, record.config, size, opset]
    return "stacked-" + hashlib.sha256(json.dumps(kind, sort_keys=True).encode()).hexdigest()[:16]


def export_stacked(bank: Bank, record: TaskRecord, out: Path, opset: int = DEFAULT_OPSET) -> ExportResult:
    """The stacked graph (StackedTaskGraph) of `record`'s kind, checked in ONNX Runtime against PyTorch on two
    task slots (the record and a freshly initialised task of more classes), written as stacked_graph_name."""
    if record.method not in MULTI_TASK_METHODS:
        raise AdapterBankError(f"method {record.method} has no stacked graph: its tasks are exported one by one")
    check_opset(opset)
    name = stacked_graph_name(bank, record, opset)
    size = task_preprocessing(record.training, bank.identity).size
    base = load_backbone(bank)
    adapt_input_size(base, size)
    classes = len(record.class_names)
    model = TunedModel(
        base, bank.identity.arch, record.method, [classes, classes + 3], record.config, bank.identity.fingerprint
    ).eval()  # tasks 2 and classes >= 4: torch.export keeps both axes dynamic (it pins sizes 0 and 1)
    load_record(model, record, 0)
    graph_module = StackedTaskGraph(model).eval()
    tensors = {**dict(model.model.named_parameters()), **dict(model.model.named_buffers())}
    stacks = tuple(tensors[key].detach() for key in graph_module.keys)
    images, task_id = parity_batch(size, 4), torch.tensor([0, 1, 1, 0])
    with torch.no_grad():
        expected = graph_module(images, task_id, *stacks).numpy()
    batch = torch.export.Dim("batch", min=1, max=65536)
    tasks = torch.export.Dim("tasks", min=1, max=1 << 24)
    width = torch.export.Dim("classes", min=1, max=1 << 24)
    head = f"{model.head_path}."
    stacked_axes = tuple({0: tasks, 1: width} if key.startswith(head) else {0: tasks} for key in graph_module.keys)
    inputs = [f"stack{i}" for i in range(len(stacks))]
    out.mkdir(parents=True, exist_ok=True)
    graph, manifest = out / f"{name}.onnx", out / f"{name}.json"
    with temporaries(graph, manifest) as (graph_tmp, manifest_tmp):
        to_onnx(
            graph_module, (images, task_id, *stacks), ["images", "task_id", *inputs], graph_tmp, opset,
            dynamic_shapes=({0: batch}, {0: batch}, stacked_axes),
        )  # fmt: skip
        check_written_opset(graph_tmp, opset)
        feeds = {"images": images.numpy(), "task_id": task_id.numpy()}
        feeds |= {i: s.numpy() for i, s in zip(inputs, stacks, strict=True)}
        error = check_parity(run_graph(graph_tmp, feeds), expected, False, f"stacked graph of task '{record.name}'")
        info = {
            "stacked": True,
            "method": record.method,
            "config": record.config,
            "backbone": bank.identity.arch,
            "fingerprint": bank.identity.fingerprint,
            "resolution": resolution(bank, model, size),
            "opset": opset,
            "inputs": {"images": ["batch", 3, size, size], "task_id": ["batch"]},
            "stacks": dict(zip(inputs, graph_module.keys, strict=True)),
            "head": model.head_path,
            "parity_max_abs_error": error,
            "built_from": {},  # any task of its kind: never stale
        }
        info = _publish(graph_tmp, manifest_tmp, graph, manifest, info)
    return ExportResult(graph, manifest, error, info)


@dataclass
class VerifyData:
    """`export --verify-data`: a dataset folder and split (None: the split the task was evaluated on)."""

    data: str | Path
    split: str | None = None
    batch_size: int = 64
    workers: int = 2

    def samples(self, record: TaskRecord) -> tuple[str, list[tuple[Path, int]]]:
        from adapterbank.evaluation import labelled_split

        return labelled_split(self.data, self.split, record)


VERIFY_TOLERANCE = 0.005  # accuracy points as a fraction: 0.5 points


def verify_export(
    graph: Path,
    info: dict[str, Any],
    model: TunedModel,
    contract: Preprocessing,
    verify: VerifyData,
    samples: tuple[str, list],
) -> dict[str, Any]:
    """Run the graph in ONNX Runtime on real images preprocessed from the manifest alone, and the PyTorch model on
    the same files preprocessed by `contract` (the bank's record of how the task was evaluated); refuse (nothing
    is published) when the accuracies differ by more than 0.5 points or the labels on more than 1% of images."""
    from adapterbank.data.images import ImageDataset
    from adapterbank.evaluation import eval_loader

    split, pairs = samples
    from_manifest = Preprocessing.from_dict(info["preprocessing"]).eval_transform()
    from_bank = contract.eval_transform()
    both = ImageDataset(pairs, lambda image: (from_manifest(image), from_bank(image)))
    graph_session = session(graph)
    graph_correct = model_correct = disagree = 0
    with torch.no_grad():
        for (graph_images, model_images), labels in eval_loader(both, verify.batch_size, verify.workers):
            graph_labels = torch.from_numpy(graph_session.run(["logits"], {"images": graph_images.numpy()})[0])
            graph_labels = graph_labels.argmax(-1)
            model_labels = model(model_images).argmax(-1)
            graph_correct += int((graph_labels == labels).sum())
            model_correct += int((model_labels == labels).sum())
            disagree += int((graph_labels != model_labels).sum())
    n = len(pairs)
    verified = {"accuracy": graph_correct / n, "n": n, "split": split, "eval_accuracy": model_correct / n}
    if abs(verified["accuracy"] - verified["eval_accuracy"]) > VERIFY_TOLERANCE or disagree > 0.01 * n:
        raise AdapterBankError(
            f"task '{info['task']}': on {split} the graph scores {verified['accuracy']:.2%} and the PyTorch model "
            f"{verified['eval_accuracy']:.2%}, labels differing on {disagree} of {n} images (allowed: 0.5 points, "
            f"1% of images); nothing written"
        )
    return verified
