"""Learning-rate schedules (docs/training.md#schedules): linear warm-up from a small start, then cosine to a floor.

"step": the lr changes every optimizer step (warm-up, then a cosine over the remaining steps).
"epoch": the lr is constant within an epoch and follows timm's CosineLRScheduler stepped once per epoch, as both
         released trainers (SNELL, SSF) use it: warm-up over epochs, then the cosine of the epoch index over the
         whole run (timm's default warmup_prefix=False), min_lr in the cool-down epochs after it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

Factor = Callable[[int], float]  # step -> multiplier of the base lr


def warmup_cosine_factor(cosine_end: int, warmup_steps: int, lr: float, min_lr: float, warmup_lr: float) -> Factor:
    """Per-step multiplier of the base lr: warmup_lr -> lr over warmup_steps, cosine lr -> min_lr until step
    `cosine_end`, min_lr after it (timm's cool-down epochs)."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (warmup_lr + (lr - warmup_lr) * step / max(1, warmup_steps)) / lr
        progress = (step - warmup_steps) / max(1, cosine_end - warmup_steps)
        return (min_lr + (lr - min_lr) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))) / lr

    return factor


def epoch_cosine_factor(
    steps_per_epoch: int, epochs: int, warmup_epochs: float, lr: float, min_lr: float, warmup_lr: float
) -> Factor:
    """timm's per-epoch cosine as a per-step multiplier (DeepSpeed steps the scheduler after every step)."""

    def factor(step: int) -> float:
        epoch = step // steps_per_epoch
        if epoch < warmup_epochs:
            value = warmup_lr + epoch * (lr - warmup_lr) / warmup_epochs
        elif epoch < epochs:
            value = min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * epoch / epochs))
        else:
            value = min_lr
        return value / lr

    return factor


def lr_factor(
    schedule: str,
    per_epoch: int,
    epochs: int,
    warmup_epochs: float,
    lr: float,
    min_lr: float,
    warmup_lr: float,
) -> Factor:
    """A run's schedule ('step' or 'epoch') as a multiplier of its base lrs, by step."""
    if schedule == "epoch":
        return epoch_cosine_factor(per_epoch, epochs, warmup_epochs, lr, min_lr, warmup_lr)
    cosine_end = per_epoch * epochs
    warmup = min(int(warmup_epochs * per_epoch), cosine_end // 2)
    return warmup_cosine_factor(cosine_end, warmup, lr, min_lr, warmup_lr)
