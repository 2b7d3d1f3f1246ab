"""Self-attention with per-task extra keys and values: U-Tuning's prefix and prompt tuners (docs/methods.md#prefix).

* prefix: learned keys and values P_k, P_v (L x D per block), concatenated to K and V inside one softmax, as the
  released ModelScope code; this equals the parallel form MHA(x) + U(x) of U-Tuning (tests/test_utuning.py).
* prompt (VPT-deep): learned tokens Z (L x C per block). A real token's output in VPT-deep depends on the prompts
  only through the keys and values LN1(Z) W_k, LN1(Z) W_v of the frozen block, and the prompts' own outputs are
  replaced at the next block, so we add those keys and values and never run the prompt tokens through the MLP:
  the same outputs for the real tokens at a fraction of the cost.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from adapterbank.methods.base import TaskModule
from adapterbank.routing import TaskRouter, gather_per_row


def released_xavier(tasks: int, length: int, width: int) -> torch.Tensor:
    """xavier_uniform_ of a (1, L, D) tensor, as the released code initialises prompts and prefixes, per task."""
    bound = math.sqrt(6.0 / ((length + 1) * width))
    return torch.empty(tasks, length, width).uniform_(-bound, bound)


class ExtendedAttention(TaskModule):
    """Wraps a timm ViT `Attention` or Swin `WindowAttention`; `norm` is the block's pre-attention norm (prompts)."""

    def __init__(
        self, base: nn.Module, norm: nn.Module, router: TaskRouter, prefix_length: int, prompt_length: int
    ) -> None:
        super().__init__(router)
        self.base = base
        object.__setattr__(self, "token_norm", norm)  # the block owns it; not a second copy in the state dict
        t, width = router.num_tasks, base.qkv.in_features
        self.attn_dim = base.qkv.out_features // 3
        self.num_heads = base.num_heads
        self.head_dim = self.attn_dim // self.num_heads
        if prompt_length:
            self.prompt = nn.Parameter(released_xavier(t, prompt_length, width))
        if prefix_length:
            self.prefix_key = nn.Parameter(released_xavier(t, prefix_length, self.attn_dim))
            self.prefix_value = nn.Parameter(released_xavier(t, prefix_length, self.attn_dim))

    def _heads(self, tokens: torch.Tensor) -> torch.Tensor:
        """(..., L, attn_dim) -> (..., heads, L, head_dim)."""
        return tokens.unflatten(-1, (self.num_heads, self.head_dim)).transpose(-3, -2)

    def task_keys_values(self, task: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Extra keys and values of every task (or of task `task` only): (tasks or 1, heads, L, head_dim) each."""
        keys, values = [], []
        one = slice(None) if task is None else slice(task, task + 1)
        if hasattr(self, "prompt"):
            prompt = self.prompt[one]
            _, k, v = self.base.qkv(self.token_norm(prompt)).chunk(3, dim=-1)
            keys.append(self.base.k_norm(self._heads(k)) if hasattr(self.base, "k_norm") else self._heads(k))
            values.append(self._heads(v))
        if hasattr(self, "prefix_key"):
            keys.append(self._heads(self.prefix_key[one]))
            values.append(self._heads(self.prefix_value[one]))
        return torch.cat(keys, dim=-2), torch.cat(values, dim=-2)

    def base_bias(self, x: torch.Tensor, attn_mask: torch.Tensor | None, mask: torch.Tensor | None):
        """The additive attention bias the frozen module would use: Swin's relative positions and shift mask."""
        if not hasattr(self.base, "_get_rel_pos_bias"):
            if attn_mask is not None and attn_mask.dtype == torch.bool:
                return torch.zeros_like(attn_mask, dtype=x.dtype).masked_fill(~attn_mask, float("-inf"))
            return attn_mask
        bias = self.base._get_rel_pos_bias()
        if mask is not None:
            rows, n, windows = x.shape[0], x.shape[1], mask.shape[0]
            mask = mask.view(1, windows, 1, n, n).expand(rows // windows, -1, self.num_heads, -1, -1)
            bias = bias + mask.reshape(-1, self.num_heads, n, n)
        return bias

    def forward(
        self,
        x: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        is_causal: bool = False,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if is_causal:
            raise ValueError("prefix and prompt tuners are for bidirectional vision attention")
        b, n, _ = x.shape
        q, k, v = self.base.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = (self.base.q_norm(q), self.base.k_norm(k)) if hasattr(self.base, "q_norm") else (q, k)
        rows = self.router.rows(b)
        extra_k, extra_v = self.task_keys_values(self.router.task if rows is None else None)
        extra_k, extra_v = gather_per_row(extra_k, rows, 0), gather_per_row(extra_v, rows, 0)
        k = torch.cat([k, extra_k.expand(b, -1, -1, -1)], dim=-2)
        v = torch.cat([v, extra_v.expand(b, -1, -1, -1)], dim=-2)
        bias = self.base_bias(x, attn_mask, mask)
        if bias is not None:
            bias = F.pad(bias, (0, extra_k.shape[-2]))
        dropout = self.base.attn_drop.p if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout)
        out = out.transpose(1, 2).reshape(b, n, self.attn_dim)
        if hasattr(self.base, "norm"):
            out = self.base.norm(out)
        if getattr(self.base, "gate", None) is not None:
            out = out * self.base.gate(x).sigmoid()
        return self.base.proj_drop(self.base.proj(out))
