"""AdamW for stacked task tensors: every task slot steps at its own learning rate and weight decay.

A model holding several tasks keeps each per-task tensor as one parameter with the task on axis 0, so torch's
parameter groups cannot give tasks different learning rates. torch's AdamW computes the Adam direction (moments,
bias correction, eps) the same for every slot, and it does not depend on the parameter's value; this class runs it
at lr 1 without decay on a zeroed parameter, which leaves exactly -direction there (stepping the values themselves
and subtracting would round the direction at the values' scale, hundreds of times its own), and then applies each
slot's own step, which is AdamW's: p <- p * (1 - lr_t * wd_t) - lr_t * direction. A slot at lr 0 does not move, so a
finished task stays as it was committed while the others train on.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn


class SlotAdamW(torch.optim.AdamW):
    def __init__(self, params: Iterable[nn.Parameter], slots: int, eps: float = 1e-8) -> None:
        params = list(params)
        if any(p.ndim == 0 or p.shape[0] != slots for p in params):
            raise ValueError(f"every parameter must stack {slots} task slots on its first axis")
        super().__init__(params, lr=1.0, weight_decay=0.0, eps=eps)
        self.slots = slots
        self.lrs = {id(p): torch.zeros(slots) for p in params}  # per parameter, per slot; 0 until set
        self.decays = {id(p): torch.zeros(slots) for p in params}

    def set_rates(self, param: nn.Parameter, lrs: torch.Tensor, decays: torch.Tensor) -> None:
        """This parameter's per-slot learning rates and weight decays for the next steps."""
        self.lrs[id(param)] = lrs.detach().to(torch.float64).cpu()
        self.decays[id(param)] = decays.detach().to(torch.float64).cpu()

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:  # evaluated on the values, before they are zeroed below
            with torch.enable_grad():
                loss = closure()
        stepped = [p for group in self.param_groups for p in group["params"] if p.grad is not None]
        before = [p.detach().clone() for p in stepped]
        for p in stepped:
            p.zero_()
        super().step()
        for p, old in zip(stepped, before, strict=True):
            shape = (self.slots,) + (1,) * (p.ndim - 1)
            lr = self.lrs[id(p)].to(device=p.device, dtype=p.dtype).view(shape)
            decay = self.decays[id(p)].to(device=p.device, dtype=p.dtype).view(shape)
            p.copy_(torch.addcmul(old * (1 - lr * decay), p, lr))  # p holds -direction: Adam's step at lr 1 from 0
        return loss
