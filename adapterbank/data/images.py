"""Images to tensors: decoded to RGB with the range each mode means (8-bit, 16-bit and float grayscale, palette),
with errors naming the file. Image files are untrusted: only regular files are opened (a FIFO or device never
blocks a run), and Pillow's decompression-bomb limits are errors, not warnings."""

from __future__ import annotations

import contextlib
import io
import os
import random
import stat
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from adapterbank.errors import AdapterBankError

_UNREADABLE = (
    OSError,
    UnidentifiedImageError,
    ValueError,
    Image.DecompressionBombError,
    Image.DecompressionBombWarning,
)
_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N")


@contextlib.contextmanager
def _opened(path: Path) -> Iterator[Image.Image]:
    """Image.open on a regular file, with bomb warnings raised as errors and every failure one line."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise AdapterBankError(f"cannot read image {path}: not a regular file (a FIFO, device or folder)")
    except OSError as exc:
        raise AdapterBankError(f"cannot read image {path}: {exc}") from exc
    with _decoded(path, str(path)) as image:
        yield image


@contextlib.contextmanager
def _decoded(source: Path | io.BytesIO, what: str) -> Iterator[Image.Image]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as image:
                yield image
    except _UNREADABLE as exc:
        detail = str(exc).replace(repr(source), "the data") if isinstance(source, io.BytesIO) else exc
        raise AdapterBankError(f"cannot read image {what}: {detail}") from exc


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB. 16-bit grayscale is scaled by 255/65535 (not clipped at 255), 32-bit integer grayscale by its
    bit depth, float grayscale from [0, 1] (or its own range when it exceeds it); everything else as Pillow
    converts it."""
    if image.mode not in (*_SIXTEEN_BIT, "I", "F"):
        return image.convert("RGB")
    values = np.asarray(image, dtype=np.float64)
    finite = values[np.isfinite(values)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    if image.mode in _SIXTEEN_BIT or (image.mode == "I" and 255 < high <= 65535 and low >= 0):
        scaled = values / 257.0
    elif image.mode == "I":
        scaled = values if low >= 0 and high <= 255 else (values - low) / max(high - low, 1.0) * 255.0
    else:
        scaled = values * 255.0 if low >= 0 and high <= 1 else (values - low) / max(high - low, 1e-12) * 255.0
    gray = np.clip(np.nan_to_num(np.rint(scaled)), 0, 255).astype(np.uint8)
    return Image.fromarray(gray, mode="L").convert("RGB")


def load_rgb(path: Path) -> Image.Image:
    with _opened(path) as image:
        return _rgb(image, str(path))


def decode_rgb(data: bytes, what: str = "from the request") -> Image.Image:
    """An encoded image file's bytes (e.g. from an HTTP request) decoded exactly as `load_rgb` decodes the file."""
    with _decoded(io.BytesIO(data), what) as image:
        return _rgb(image, what)


def _rgb(image: Image.Image, what: str) -> Image.Image:
    try:
        return to_rgb(image)
    except _UNREADABLE as exc:  # truncated data shows only when decoding
        raise AdapterBankError(f"cannot read image {what}: {exc}") from exc


def check_headers(samples: Sequence[tuple[Path, int]]) -> None:
    """Open every file's header up front: a non-image, empty, special or bomb file fails here, not in the middle
    of an epoch."""
    for path, _ in samples:
        with _opened(path) as image:
            image.size  # noqa: B018 - reading the header is the check


@contextlib.contextmanager
def seeded(*key: int) -> Iterator[None]:
    """Python's and torch's generators seeded from `key` inside, and as they were after: a random transform then
    draws the same for the same key in any process, worker or resumed run."""
    value = int(np.random.SeedSequence([abs(k) for k in key]).generate_state(1)[0])
    saved = random.getstate()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(value)
        random.seed(value)
        try:
            yield
        finally:
            random.setstate(saved)


class ImageDataset(torch.utils.data.Dataset):
    """(image, label) pairs. With a `seed`, a random (training) transform draws per (seed, epoch, index): set
    `epoch` before each epoch's loader."""

    def __init__(
        self,
        samples: Sequence[tuple[Path, int]],
        transform: Callable[[Image.Image], torch.Tensor],
        seed: int | None = None,
    ) -> None:
        self.samples = list(samples)
        self.transform = transform
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.sample(index, self.epoch)

    def sample(self, index: int, epoch: int) -> tuple[torch.Tensor, int]:
        """Sample `index` as epoch `epoch` draws it (a loader of several epochs or datasets names the epoch)."""
        path, label = self.samples[index]
        image = load_rgb(path)
        if self.seed is None:
            return self.transform(image), label
        with seeded(self.seed, epoch, index):
            return self.transform(image), label


def unwrap_worker_error(exc: AdapterBankError) -> AdapterBankError:
    """A DataLoader worker re-raises our error with its whole traceback as the message: keep the original line."""
    text = str(exc)
    if "DataLoader worker" not in text:
        return exc
    last = text.strip().splitlines()[-1]
    return AdapterBankError(last.split("AdapterBankError: ", 1)[-1])


def loader_batches(loader: torch.utils.data.DataLoader) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """A loader's batches; an error raised in one of its workers comes out as its own line."""
    try:
        yield from loader
    except AdapterBankError as exc:
        raise unwrap_worker_error(exc) from exc
