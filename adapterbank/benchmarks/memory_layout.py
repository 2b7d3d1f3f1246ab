"""A CNN's images stored channels first (NCHW) against channels last (NHWC), per method, in one process: a training
step (forward, cross-entropy, backward) and an inference forward, interleaved so machine drift hits both alike.
TunedModel picks channels last for CNNs; this shows what that buys and that both compute the same logits."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from adapterbank.benchmarks.timing import interleaved_medians
from adapterbank.errors import AdapterBankError
from adapterbank.tuned import TunedModel, tune

_LAYOUTS = (("first", False), ("last", True))


@dataclass
class LayoutRow:
    method: str
    train_first_s: float
    train_last_s: float
    eval_first_s: float
    eval_last_s: float
    max_logit_diff: float


def _train_step(model: TunedModel, images: torch.Tensor, labels: torch.Tensor, channels_last: bool) -> None:
    model.channels_last = channels_last
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(images), labels).backward()


@torch.no_grad()
def _forward(model: TunedModel, images: torch.Tensor, channels_last: bool) -> torch.Tensor:
    model.channels_last = channels_last
    return model(images)


def memory_layout(arch: str, methods: Sequence[str], batch: int, size: int, rounds: int) -> list[LayoutRow]:
    """Median seconds of each layout per method (random-init weights: the arithmetic is what is timed)."""
    return [_measure(arch, method, batch, size, rounds) for method in methods]


def _measure(arch: str, method: str, batch: int, size: int, rounds: int) -> LayoutRow:
    torch.manual_seed(0)
    model = tune(arch, method, 10)
    if not model.channels_last:
        raise AdapterBankError(f"{arch} keeps channels first (ViT, Swin, ConvNeXt): bench layout compares a CNN's")
    images, labels = torch.randn(batch, 3, size, size), torch.randint(0, 10, (batch,))
    model.train()
    train = interleaved_medians(
        {name: functools.partial(_train_step, model, images, labels, last) for name, last in _LAYOUTS}, rounds
    )
    model.eval()
    forwards = {name: functools.partial(_forward, model, images, last) for name, last in _LAYOUTS}
    infer = interleaved_medians(forwards, rounds)
    diff = (_forward(model, images, True) - _forward(model, images, False)).abs().max().item()
    return LayoutRow(method, train["first"], train["last"], infer["first"], infer["last"], diff)
