"""Accuracy of a banked task on a dataset split, preprocessed exactly as in its training run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from adapterbank.bank.models import load_tasks
from adapterbank.bank.store import Bank
from adapterbank.data import open_dataset
from adapterbank.data.images import ImageDataset, check_headers
from adapterbank.data.preprocessing import task_preprocessing
from adapterbank.errors import AdapterBankError
from adapterbank.training.trainer import eval_loader, evaluate


def evaluate_task(
    bank_path: str | Path, task: str, data: str | Path, split: str | None, batch_size: int = 64, workers: int = 2
) -> dict[str, Any]:
    """{"task", "split", "accuracy", "n"} with accuracy in [0, 1]."""
    bank = Bank(bank_path)
    model, [record] = load_tasks(bank, [task])
    dataset = open_dataset(data)
    if len(dataset.class_names) != len(record.class_names):
        raise AdapterBankError(
            f"dataset '{data}' has {len(dataset.class_names)} classes; task '{task}' has {len(record.class_names)}"
        )
    training = record.training
    split = split or training.get("eval_split") or dataset.default_splits()[1]
    samples = dataset.split(split)
    check_headers(samples)
    transform = task_preprocessing(training, bank.identity).eval_transform()
    accuracy, n = evaluate(
        model, eval_loader(ImageDataset(samples, transform), batch_size, workers), torch.device("cpu")
    )
    return {"task": task, "split": split, "accuracy": accuracy, "n": n}
