"""Transforms per recipe, normalised with the backbone's mean and std.

none  (VTAB-1k protocol) direct resize to size x size, bicubic, train and eval alike
fgvc  (SNELL/VPT FGVC protocol) train: timm RandomResizedCrop + flip + colour jitter 0.4;
      eval: resize to size / crop_pct, centre crop
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from PIL import Image
from timm.data import create_transform
from torchvision import transforms as T

from adapterbank.errors import AdapterBankError

AUGMENTATIONS = ("none", "fgvc")


def make_transform(
    augment: str, size: int, mean: Sequence[float], std: Sequence[float], crop_pct: float, training: bool
) -> Callable[[Image.Image], torch.Tensor]:
    if augment not in AUGMENTATIONS:
        raise AdapterBankError(f"unknown augmentation '{augment}': choose one of {', '.join(AUGMENTATIONS)}")
    if augment == "none":
        return T.Compose(
            [
                T.Resize((size, size), interpolation=T.InterpolationMode.BICUBIC),
                T.ToTensor(),
                T.Normalize(mean, std),
            ]
        )
    return create_transform(
        input_size=size,
        is_training=training,
        interpolation="bicubic",
        mean=tuple(mean),
        std=tuple(std),
        crop_pct=crop_pct,
        color_jitter=0.4 if training else None,
    )
