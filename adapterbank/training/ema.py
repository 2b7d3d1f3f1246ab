"""Exponential moving average of a task's trainable tensors (SSF's FGVC recipe: timm --model-ema).

timm's ModelEmaV3 keeps a deep copy of the module it averages; given only a list of the trainable tensors it
copies those, never the frozen backbone. The average is what evaluation sees and what the bank stores.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from timm.utils import ModelEmaV3
from torch import nn


class TaskEma:
    def __init__(self, parameters: list[nn.Parameter], decay: float) -> None:
        self.tracked = nn.ParameterList(parameters)  # the live parameters themselves, not copies
        self.ema = ModelEmaV3(self.tracked, decay=decay)

    def update(self, step: int) -> None:
        self.ema.update(self.tracked, step=step)

    @contextlib.contextmanager
    def swapped_in(self) -> Iterator[None]:
        """The live parameters hold the averages inside the block, their own values again after it."""
        saved = [p.detach().clone() for p in self.tracked]
        with torch.no_grad():
            for live, average in zip(self.tracked, self.ema.module, strict=True):
                live.copy_(average)
        try:
            yield
        finally:
            with torch.no_grad():
                for live, own in zip(self.tracked, saved, strict=True):
                    live.copy_(own)

    def state(self) -> list[torch.Tensor]:
        return [p.detach().clone() for p in self.ema.module]

    def load(self, tensors: list[torch.Tensor]) -> None:
        with torch.no_grad():
            for average, value in zip(self.ema.module, tensors, strict=True):
                average.copy_(value)
