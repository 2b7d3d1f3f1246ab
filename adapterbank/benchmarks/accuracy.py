"""Real-data accuracy of every method on every task of a data folder, on real pretrained weights, side by side."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from adapterbank.bank.paths import regular_file
from adapterbank.bank.store import Bank
from adapterbank.data.layouts import detect_layout
from adapterbank.errors import AdapterBankError
from adapterbank.packaged_weights import PACKAGED_ARCH, PACKAGED_VIT
from adapterbank.training.settings import TrainSettings, resolve
from adapterbank.training.trainer import Reporter, train

METHODS = ("linear", "full", "bitfit", "ssf", "lora", "snell", "adapter")  # every family has them
ATTENTION_METHODS = ("prefix", "prompt", "utuning")  # extend self-attention: ViT and Swin only
RECIPES = {PACKAGED_VIT: "cpu/vit-short"}  # the CPU schedule per packaged backbone; others: cpu/short


def default_methods(backbone: str) -> tuple[str, ...]:
    """Every method the backbone can take."""
    import timm
    import torch

    from adapterbank.anatomy import family_of

    with torch.device("meta"):
        family = family_of(timm.create_model(backbone.split(".")[0]))
    return METHODS + ATTENTION_METHODS if family in ("vit", "swin") else METHODS


def default_recipe(backbone: str) -> str:
    return RECIPES.get(backbone.split(".")[0], "cpu/short")


@dataclass
class AccuracyRow:
    task: str
    method: str
    accuracy: float
    n: int
    trainable: int  # values the task owns in the bank, head included
    bank_bytes: int
    seconds: float


def find_tasks(data_root: Path) -> dict[str, Path]:
    """Every dataset folder one or two levels below `data_root`, by folder name."""
    found = {}
    for folder in sorted(p for p in data_root.glob("*/*") if p.is_dir()) + sorted(data_root.glob("*")):
        try:
            detect_layout(folder)
        except AdapterBankError:
            continue
        found.setdefault(folder.name, folder)
    if not found:
        raise AdapterBankError(f"no dataset folders under '{data_root}'")
    return found


def accuracy_table(
    data_root: Path,
    bank: Path,
    tasks: Sequence[str] | None = None,
    methods: Sequence[str] | None = None,
    recipe: str | None = None,
    reporter: Callable[[str, str], Reporter] | None = None,
    reuse: bool = False,
    backbone: str = PACKAGED_ARCH,
    checkpoint: str | None = "packaged",
) -> list[AccuracyRow]:
    """One run per task x method (default: every method the backbone takes, with its packaged CPU recipe). With
    `reuse`, a run the bank already holds with identical settings is read back instead of retrained (so a new method
    joins an existing table without redoing the others)."""
    methods = methods or default_methods(backbone)
    recipe = recipe or default_recipe(backbone)
    available = find_tasks(data_root)
    chosen = list(tasks) if tasks else list(available)
    unknown = [t for t in chosen if t not in available]
    if unknown:
        raise AdapterBankError(f"no task '{unknown[0]}' under '{data_root}' (tasks: {', '.join(available)})")
    rows = []
    for task in chosen:
        for method in methods:
            name = f"{task}-{method}"
            flags = dict(
                task=name,
                method=method,
                data=str(available[task]),
                bank=str(bank),
                backbone=backbone,
                checkpoint=checkpoint,
                recipe=recipe,
            )
            settings = resolve(flags, {})
            settings.eval_every = settings.epochs
            if not (reuse and _same_run(Path(bank), name, settings)):
                train(settings, reporter(task, method) if reporter else None)
            record = Bank(bank).load(name, with_tensors=False)
            rows.append(
                AccuracyRow(
                    task,
                    method,
                    record.metrics["accuracy"],
                    record.metrics["n"],
                    record.num_values,
                    Bank(bank).task_file(name).stat().st_size,
                    record.training["seconds"],
                )
            )
    return rows


def _same_run(bank_path: Path, name: str, settings: TrainSettings) -> bool:
    """Every setting given equals the stored run's (unset ones, e.g. the split, were resolved from the same data).
    No bank yet: nothing to reuse."""
    if not regular_file(bank_path / "bank.h5"):
        return False
    bank = Bank(bank_path)
    if name not in bank.tasks():
        return False
    wanted = {k: v for k, v in json.loads(json.dumps(dataclasses.asdict(settings))).items() if v is not None}
    training = bank.load(name, with_tensors=False).training
    return {key: training.get(key) for key in wanted} == wanted
