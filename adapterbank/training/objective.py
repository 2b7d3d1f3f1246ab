"""The training objective: cross-entropy with label smoothing, or timm's Mixup/CutMix on soft targets."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.data import Mixup
from timm.data.mixup import mixup_target
from timm.loss import SoftTargetCrossEntropy


class Objective:
    def __init__(self, num_classes: int, label_smoothing: float, mixup: float, cutmix: float) -> None:
        self.num_classes = num_classes
        self.label_smoothing = label_smoothing
        self.mix = (
            Mixup(mixup_alpha=mixup, cutmix_alpha=cutmix, label_smoothing=label_smoothing, num_classes=num_classes)
            if mixup > 0 or cutmix > 0
            else None
        )
        self.soft_loss = SoftTargetCrossEntropy()

    def prepare(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, targets): mixed images and soft targets when mixing (timm's batch mode pairs samples, so an
        odd last batch keeps its images and gets smoothed one-hot targets), else the labels."""
        if self.mix is None:
            return images, labels
        if len(images) % 2 == 0:
            return self.mix(images, labels)
        return images, mixup_target(labels, self.num_classes, lam=1.0, smoothing=self.label_smoothing)

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.mix is not None:
            return self.soft_loss(logits.float(), targets)
        return F.cross_entropy(logits.float(), targets, label_smoothing=self.label_smoothing)
