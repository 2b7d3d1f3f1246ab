"""A task's preprocessing contract: how an image becomes the tensor the task was trained and evaluated on.

It is resolved once at training time (recipe or flags, else the backbone's pretrained config), stored with the
task, and is then the only source of the eval transform for `eval`, `predict` and exports, so they cannot drift.

    resize "direct"  resize to size x size (VTAB-1k protocol), no crop
    resize "crop"    resize the short side to floor(size / crop_pct), centre crop size x size (timm's eval)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from PIL import Image
from timm.data import RandomResizedCropAndInterpolation
from timm.data.random_erasing import RandomErasing
from torchvision import transforms as T

from adapterbank.errors import AdapterBankError

AUGMENTATIONS = ("none", "fgvc", "simple")  # none: VTAB-1k; fgvc: SNELL/VPT FGVC; simple: SSF --simple-aug
INTERPOLATIONS = ("bicubic", "bilinear", "nearest")
TRAIN_INTERPOLATIONS = (*INTERPOLATIONS, "random")  # random: bilinear or bicubic per image (timm, SSF FGVC)
MAX_SIZE = 4096  # px per side: far beyond any backbone's training size; bounds what a stored record can ask for
MAX_RESIZED_PIXELS = 1 << 26  # a resize of the short side scales the long side too: a thin image is refused first


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    size: int
    resize: str  # "direct" or "crop"
    crop_pct: float
    interpolation: str
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        if not 1 <= self.size <= MAX_SIZE:
            raise AdapterBankError(f"image size must be in [1, {MAX_SIZE}] px, got {self.size}")
        if self.resize not in ("direct", "crop"):
            raise AdapterBankError(f"resize must be 'direct' or 'crop', got '{self.resize}'")
        if self.interpolation not in INTERPOLATIONS:
            raise AdapterBankError(
                f"interpolation must be one of {', '.join(INTERPOLATIONS)}, got '{self.interpolation}'"
            )
        if not 0.0 < self.crop_pct <= 1.0 or self.resize_to > MAX_SIZE:
            raise AdapterBankError(
                f"crop_pct must be in (0, 1] with size / crop_pct <= {MAX_SIZE}, got {self.crop_pct}"
            )
        values = (*self.mean, *self.std)
        if len(self.mean) != 3 or len(self.std) != 3 or not all(math.isfinite(v) for v in values) or min(self.std) <= 0:
            raise AdapterBankError(f"mean and std need 3 finite values each (std > 0), got {self.mean} and {self.std}")

    @property
    def resize_to(self) -> int:
        """The short side before the centre crop ("crop"), as timm: floor(size / crop_pct)."""
        return math.floor(self.size / self.crop_pct)

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Preprocessing:
        try:
            return cls(
                size=int(values["size"]),
                resize=str(values["resize"]),
                crop_pct=float(values["crop_pct"]),
                interpolation=str(values["interpolation"]),
                mean=tuple(float(v) for v in values["mean"]),
                std=tuple(float(v) for v in values["std"]),
            )
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise AdapterBankError(f"malformed preprocessing record: {exc}") from exc

    def manifest(self) -> dict[str, Any]:
        """The contract for someone with only the exported graph: every step, with torchvision's rounding rules."""
        if self.resize == "direct":
            geometry = [f"resize to {self.size}x{self.size} ({self.interpolation}, PIL resampling)"]
        else:
            geometry = [
                f"resize the short side to {self.resize_to}, the long side to int({self.resize_to} * long / short) "
                f"({self.interpolation}, PIL resampling)",
                f"centre crop {self.size}x{self.size}: top = round((height - {self.size}) / 2), left likewise",
            ]
        steps = [
            "decode and convert to RGB (PIL Image.convert('RGB'))",
            *geometry,
            "to float32 in [0, 1] (divide by 255)",
            "normalize per channel: (x - mean) / std",
            "layout NCHW: images of shape [batch, 3, size, size]",
        ]
        return {**self.to_dict(), "resize_to": self.resize_to, "input_size": [3, self.size, self.size], "steps": steps}

    def eval_transform(self) -> Callable[[Image.Image], torch.Tensor]:
        interpolation = T.InterpolationMode(self.interpolation)
        if self.resize == "direct":
            geometry = [T.Resize((self.size, self.size), interpolation=interpolation)]
        else:
            geometry = [
                self._refuse_elongated,
                T.Resize(self.resize_to, interpolation=interpolation),
                T.CenterCrop(self.size),
            ]
        return T.Compose([*geometry, T.ToTensor(), T.Normalize(self.mean, self.std)])

    def _refuse_elongated(self, image: Image.Image) -> Image.Image:
        """A 2 x 4,000,000 px image is small, but resizing its short side to `resize_to` would allocate gigabytes."""
        width, height = image.size
        long_side = self.resize_to * max(width, height) / max(1, min(width, height))
        if self.resize_to * long_side > MAX_RESIZED_PIXELS:
            raise AdapterBankError(
                f"a {width}x{height} image is too elongated: resizing its short side to {self.resize_to} px would "
                f"make it {self.resize_to}x{long_side:.0f}"
            )
        return image

    def train_transform(
        self, augment: str, interpolation: str, random_erase: float = 0.0
    ) -> Callable[[Image.Image], torch.Tensor]:
        """none: the eval transform itself; fgvc: random resized crop + flip + colour jitter 0.4 (timm's training
        defaults, SNELL FGVC); simple: random resized crop + flip (SSF --simple-aug). Random erasing (timm, pixel
        mode, on the normalized tensor) when asked."""
        if augment not in AUGMENTATIONS:
            raise AdapterBankError(f"unknown augmentation '{augment}': choose one of {', '.join(AUGMENTATIONS)}")
        if augment == "none":
            steps: list[Callable] = [self.eval_transform()]
        else:
            steps = [
                RandomResizedCropAndInterpolation(self.size, interpolation=interpolation),
                T.RandomHorizontalFlip(),
            ]
            if augment == "fgvc":
                steps.append(T.ColorJitter(0.4, 0.4, 0.4))
            steps += [T.ToTensor(), T.Normalize(self.mean, self.std)]
        if random_erase:
            steps.append(RandomErasing(random_erase, mode="pixel", device="cpu"))
        return T.Compose(steps)


def resolve_preprocessing(
    augment: str,
    size: int,
    defaults: Any,
    *,
    mean: Any = None,
    std: Any = None,
    interpolation: str | None = None,
    crop_pct: float | None = None,
) -> Preprocessing:
    """A new task's contract: explicit values (recipe or flags) over the backbone's pretrained config (`defaults`,
    a BackboneIdentity). VTAB-style training (augment none) resizes directly; the others crop as timm evaluates."""
    return Preprocessing(
        size=int(size),
        resize="direct" if augment == "none" else "crop",
        crop_pct=float(crop_pct if crop_pct is not None else defaults.crop_pct),
        interpolation=str(
            interpolation or (defaults.interpolation if defaults.interpolation in INTERPOLATIONS else "bicubic")
        ),
        mean=tuple(float(v) for v in (mean if mean is not None else defaults.mean)),
        std=tuple(float(v) for v in (std if std is not None else defaults.std)),
    )


def task_preprocessing(training: Mapping[str, Any], defaults: Any) -> Preprocessing:
    """The stored contract of a banked task; tasks banked before it was stored get what they were trained with
    then (bicubic, the backbone's mean/std and crop_pct, direct resize for augment none)."""
    if isinstance(training.get("preprocessing"), Mapping):
        return Preprocessing.from_dict(training["preprocessing"])
    size = training.get("image_size") or defaults.input_size[-1]
    if isinstance(size, bool) or not isinstance(size, int):
        raise AdapterBankError(f"stored image size must be an integer, got {size!r}")
    return resolve_preprocessing(str(training.get("augment", "none")), size, defaults, interpolation="bicubic")
