"""A self-check of a backbone x method: trainable size, and that merging gives the same logits at zero overhead."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import timm
import torch
from torch import nn

from adapterbank.tuned import TunedModel


@dataclass
class MethodReport:
    method: str
    trainable: int  # per task, head excluded
    head: int
    backbone_params: int
    merged_same_as_bare: bool | None  # None: the method does not merge
    max_logit_diff: float | None


def perturb_task_parameters(model: TunedModel, std: float = 0.02, seed: int = 0) -> None:
    """Move every trainable tensor off its initial value, as training would (so merge checks are not trivial)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in model.trainable_parameters():
            p.add_(torch.randn(p.shape, generator=generator).to(p) * std)


def same_structure(a: nn.Module, b: nn.Module) -> bool:
    """Same module types in the same places and the same parameter names and shapes."""
    types_a = [(n, type(m).__name__) for n, m in a.named_modules()]
    types_b = [(n, type(m).__name__) for n, m in b.named_modules()]
    shapes_a = [(n, tuple(p.shape)) for n, p in a.named_parameters()]
    shapes_b = [(n, tuple(p.shape)) for n, p in b.named_parameters()]
    return types_a == types_b and shapes_a == shapes_b


def inspect_method(
    backbone: nn.Module, arch: str, method: str, options: dict[str, Any], num_classes: int, images: torch.Tensor
) -> MethodReport:
    tuned = TunedModel(copy.deepcopy(backbone), arch, method, [num_classes], options).eval()
    perturb_task_parameters(tuned)
    head = tuned.num_trainable() - tuned.num_trainable(include_head=False)
    body = sum(p.numel() for k, p in backbone.named_parameters() if not k.startswith(tuned.head_path + "."))
    report = MethodReport(method, tuned.num_trainable(include_head=False), head, body, None, None)
    if tuned.method.mergeable:
        with torch.no_grad():
            merged = tuned.merge(0)
            report.max_logit_diff = (merged(images) - tuned(images)).abs().max().item()
        report.merged_same_as_bare = same_structure(
            merged, timm.create_model(arch.split(".")[0], num_classes=num_classes)
        )
    return report
