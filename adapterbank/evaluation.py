"""Top-1 accuracy: of a model over a loader (during training), and of a banked task on a dataset split,
preprocessed exactly as in its training run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from adapterbank.bank.store import Bank, TaskRecord
from adapterbank.bank.torch_bridge import load_tasks
from adapterbank.data import open_dataset
from adapterbank.data.images import ImageDataset, check_headers, loader_batches
from adapterbank.data.preprocessing import task_preprocessing
from adapterbank.errors import AdapterBankError
from adapterbank.training.devices import autocast
from adapterbank.tuned import TunedModel


def eval_loader(dataset: ImageDataset, batch_size: int, workers: int) -> torch.utils.data.DataLoader:
    """In order; with a generator of its own, so evaluating never moves the global random state."""
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=workers, generator=torch.Generator().manual_seed(0)
    )


@torch.no_grad()
def evaluate(
    model: TunedModel, loader: torch.utils.data.DataLoader, device: torch.device, slot: int | None = None
) -> tuple[float, int]:
    """Top-1 accuracy and the number of samples of a single-task model, or of task slot `slot` of a model of
    several."""
    was_training = model.training
    model.eval()
    correct = total = 0
    try:
        for images, labels in loader_batches(loader):
            slots = None if slot is None else torch.full((len(images),), slot, dtype=torch.long, device=device)
            with autocast(device):
                logits = model(images.to(device), slots)
            correct += int((logits.argmax(-1).cpu() == labels).sum())
            total += len(labels)
    finally:
        model.train(was_training)
    return correct / max(total, 1), total


def labelled_split(data: str | Path, split: str | None, record: TaskRecord) -> tuple[str, list[tuple[Path, int]]]:
    """(split, [(image, label)]) of a dataset for a banked task: the split it was evaluated on unless named; the
    class count must be the task's; every image header is read up front."""
    dataset = open_dataset(data)
    if len(dataset.class_names) != len(record.class_names):
        raise AdapterBankError(
            f"dataset '{data}' has {len(dataset.class_names)} classes; task '{record.name}' has "
            f"{len(record.class_names)}"
        )
    split = split or record.training.get("eval_split") or dataset.default_splits()[1]
    samples = dataset.split(split)
    check_headers(samples)
    return split, samples


def evaluate_task(
    bank_path: str | Path, task: str, data: str | Path, split: str | None, batch_size: int = 64, workers: int = 2
) -> dict[str, Any]:
    """{"task", "split", "accuracy", "n"} with accuracy in [0, 1]."""
    bank = Bank(bank_path)
    model, [record] = load_tasks(bank, [task])
    split, samples = labelled_split(data, split, record)
    transform = task_preprocessing(record.training, bank.identity).eval_transform()
    accuracy, n = evaluate(
        model, eval_loader(ImageDataset(samples, transform), batch_size, workers), torch.device("cpu")
    )
    return {"task": task, "split": split, "accuracy": accuracy, "n": n}
