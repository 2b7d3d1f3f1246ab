"""Learning-rate schedule (METHODS 1.5, 2.4): linear warm-up from a small start, then cosine to a floor."""

from __future__ import annotations

import math

import torch


def warmup_cosine(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int, lr: float, min_lr: float, warmup_lr: float
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step multiplier of the base lr: warmup_lr -> lr over warmup_steps, cosine lr -> min_lr after."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (warmup_lr + (lr - warmup_lr) * step / max(1, warmup_steps)) / lr
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return (min_lr + (lr - min_lr) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))) / lr

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
