"""Images to tensors: decoded to RGB (grayscale and palette images converted), with errors naming the file."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError

from adapterbank.errors import AdapterBankError


def load_rgb(path: Path) -> Image.Image:
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise AdapterBankError(f"cannot read image {path}: {exc}") from exc


def check_headers(samples: Sequence[tuple[Path, int]]) -> None:
    """Open every file's header up front: a non-image or empty file fails here, not in the middle of an epoch."""
    for path, _ in samples:
        try:
            with Image.open(path) as image:
                image.size  # noqa: B018 - reading the header is the check
        except (OSError, UnidentifiedImageError, ValueError) as exc:
            raise AdapterBankError(f"cannot read image {path}: {exc}") from exc


class ImageDataset(torch.utils.data.Dataset):
    def __init__(self, samples: Sequence[tuple[Path, int]], transform: Callable[[Image.Image], torch.Tensor]) -> None:
        self.samples = list(samples)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        return self.transform(load_rgb(path)), label


def unwrap_worker_error(exc: AdapterBankError) -> AdapterBankError:
    """A DataLoader worker re-raises our error with its whole traceback as the message: keep the original line."""
    text = str(exc)
    if "DataLoader worker" not in text:
        return exc
    last = text.strip().splitlines()[-1]
    return AdapterBankError(last.split("AdapterBankError: ", 1)[-1])
