"""A task's data for training: its train and evaluation sets, and the preprocessing resolved for them."""

from __future__ import annotations

from typing import Any

from adapterbank.bank.store import Bank
from adapterbank.data.images import ImageDataset, check_headers
from adapterbank.data.layouts import Dataset
from adapterbank.data.preprocessing import resolve_preprocessing
from adapterbank.errors import AdapterBankError
from adapterbank.training.settings import TrainSettings


def task_datasets(
    dataset: Dataset, settings: TrainSettings, bank: Bank
) -> tuple[ImageDataset, ImageDataset, dict[str, Any]]:
    """Train and eval sets, and the resolved preprocessing (recorded with the task so eval can repeat it)."""
    train_split, eval_split = dataset.default_splits()
    train_split, eval_split = settings.train_split or train_split, settings.eval_split or eval_split
    train_samples, eval_samples = dataset.split(train_split), dataset.split(eval_split)
    if len({label for _, label in train_samples}) < 2:
        raise AdapterBankError(f"split '{train_split}' of '{dataset.root}' has a single class: check its labels")
    check_headers(train_samples)
    check_headers(eval_samples)
    size = settings.image_size or bank.identity.input_size[-1]
    augment = settings.augment or ("none" if dataset.layout == "vtab" else "fgvc")
    contract = resolve_preprocessing(
        augment,
        size,
        bank.identity,
        mean=settings.mean,
        std=settings.std,
        interpolation=settings.interpolation,
        crop_pct=settings.crop_pct,
    )
    crop_interpolation = settings.train_interpolation or contract.interpolation
    train_transform = contract.train_transform(augment, crop_interpolation, settings.random_erase)
    train = ImageDataset(train_samples, train_transform, seed=settings.seed)
    evaluation = ImageDataset(eval_samples, contract.eval_transform())
    resolved = {
        "train_split": train_split,
        "eval_split": eval_split,
        "image_size": size,
        "augment": augment,
        "preprocessing": contract.to_dict(),
    }
    return train, evaluation, resolved
