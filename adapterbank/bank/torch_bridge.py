"""The bridge between the torch world and the store: banks from backbones, records from tuned models, and tuned
models (one task or many) from a bank, with the backbone checked against its fingerprint."""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
from torch import nn

from adapterbank.anatomy import backbone_state, fingerprint, has_fixed_input_size
from adapterbank.backbones import adapt_input_size
from adapterbank.bank.store import BackboneIdentity, Bank, TaskRecord, check_shapes, check_task_name
from adapterbank.data.preprocessing import task_preprocessing
from adapterbank.errors import AdapterBankError
from adapterbank.tuned import TunedModel


def identity_of(model: nn.Module, arch: str, checkpoint: str) -> BackboneIdentity:
    cfg = model.pretrained_cfg
    return BackboneIdentity(
        arch=arch,
        fingerprint=fingerprint(model, arch),
        input_size=tuple(int(v) for v in cfg.get("input_size", (3, 224, 224))),
        mean=tuple(float(v) for v in cfg.get("mean", (0.485, 0.456, 0.406))),
        std=tuple(float(v) for v in cfg.get("std", (0.229, 0.224, 0.225))),
        interpolation=str(cfg.get("interpolation", "bicubic")),
        crop_pct=float(cfg.get("crop_pct", 0.875)),
        checkpoint=checkpoint,
    )


def create_bank(path: str | Path, model: nn.Module, arch: str, checkpoint: str) -> Bank:
    """A bank for this backbone (or the existing one at `path`, if it holds the same backbone)."""
    tensors = {k: v.detach().cpu().contiguous().numpy() for k, v in backbone_state(model).items()}
    return Bank.create(path, identity_of(model, arch, checkpoint), tensors)


def load_backbone(bank: Bank, drop_path_rate: float = 0.0) -> nn.Module:
    """The bank's frozen backbone, rebuilt from its own weights and checked against the fingerprint.
    `drop_path_rate` > 0 builds it with stochastic depth (for training; DropPath is the identity in eval mode)."""
    identity = bank.identity
    try:
        model = timm.create_model(identity.arch, **({"drop_path_rate": drop_path_rate} if drop_path_rate else {}))
    except TypeError as exc:
        raise AdapterBankError(f"{identity.arch} has no stochastic depth; train without drop_path_rate") from exc
    tensors = {k: torch.from_numpy(v.copy()) for k, v in bank.backbone_tensors().items()}
    _missing, unexpected = model.load_state_dict(tensors, strict=False)
    if unexpected or fingerprint(model, identity.arch) != identity.fingerprint:
        raise AdapterBankError(
            f"bank '{bank.path}': backbone.safetensors does not match the bank's fingerprint (file replaced or corrupt)"
        )
    return model.eval()


def task_record(
    model: TunedModel,
    name: str,
    class_names: Sequence[str] | None = None,
    task: int = 0,
    metrics: dict[str, Any] | None = None,
    training: dict[str, Any] | None = None,
) -> TaskRecord:
    """What the bank stores for one task of `model`."""
    count = model.num_classes[task]
    names = [str(i) for i in range(count)] if class_names is None else [str(c) for c in class_names]
    if len(names) != count:
        raise AdapterBankError(f"task '{name}': {len(names)} class names for {count} classes")
    return TaskRecord(
        name=name,
        method=model.method.name,
        config=model.config.to_dict(),
        tensors={k: v.detach().float().cpu().numpy() for k, v in model.state(task).items()},
        class_names=names,
        fingerprint=model.backbone_fingerprint,
        metrics=dict(metrics or {}),
        training=dict(training or {}),
    )


def load_tasks(
    bank: Bank, names: Sequence[str], backbone: nn.Module | None = None
) -> tuple[TunedModel, list[TaskRecord]]:
    """One TunedModel holding `names` (all of one method and config) on the bank's backbone."""
    records = [bank.load(name) for name in names]
    first = records[0]
    for record in records[1:]:
        if (record.method, record.config) != (first.method, first.config):
            raise AdapterBankError(
                f"tasks '{first.name}' ({first.method}) and '{record.name}' ({record.method}) differ in method or "
                f"config: load them into separate models"
            )
    base = load_backbone(bank) if backbone is None else backbone
    sizes = {r.name: task_preprocessing(r.training, bank.identity).size for r in records}
    if has_fixed_input_size(base) and len(set(sizes.values())) > 1:
        listed = ", ".join(f"{name}: {size} px" for name, size in sizes.items())
        raise AdapterBankError(
            f"tasks trained at different image sizes ({listed}) cannot share one model of this backbone: "
            f"load them apart"
        )
    adapt_input_size(base, sizes[first.name])
    classes = [len(r.class_names) for r in records]
    model = TunedModel(base, bank.identity.arch, first.method, classes, first.config, bank.identity.fingerprint)
    for index, record in enumerate(records):
        load_record(model, record, index)
    return model.eval(), records


def load_record(model: TunedModel, record: TaskRecord, slot: int) -> None:
    """Put a banked task into one slot of a model; a missing or mis-shaped tensor is named with the task."""
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in record.tensors.items()}
    try:
        model.load_state(tensors, task=slot)
    except AdapterBankError as exc:
        raise AdapterBankError(f"task '{record.name}': {exc}") from exc


def expected_shapes(identity: BackboneIdentity, record: TaskRecord) -> dict[str, tuple[int, ...]]:
    """The tensor shapes the record's method and config need on this backbone at the task's image size (built on
    the meta device: a crafted config allocates nothing). Untrusted values fail as one-line errors."""
    size = task_preprocessing(record.training, identity).size
    try:
        config = json.dumps(record.config, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise AdapterBankError(f"task '{record.name}': its config is not plain data ({exc})") from exc
    return dict(_shapes(identity.arch, record.method, config, size, len(record.class_names)))


@functools.lru_cache(maxsize=256)
def _shapes(arch: str, method: str, config: str, size: int, classes: int) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """One meta model per (method, config, size, classes): a runtime over many tasks of one kind builds it once."""
    with torch.device("meta"):
        backbone = timm.create_model(arch)
        adapt_input_size(backbone, size)
        model = TunedModel(backbone, arch, method, [classes], json.loads(config), "meta")
    return tuple((k, tuple(v.shape)) for k, v in model.state(0).items())


def check_record_shapes(identity: BackboneIdentity, record: TaskRecord) -> None:
    check_shapes(record, expected_shapes(identity, record))


def commit(bank: Bank, record: TaskRecord) -> TaskRecord:
    """Commit atomically, refused unless the tensors are exactly what the record's method builds on this bank."""
    check_task_name(record.name)
    bank.check_belongs(record)  # a known method of this backbone, before a model is built from it
    return bank.commit(record, expected_shapes(bank.identity, record))
