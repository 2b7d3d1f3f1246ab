"""SNELL (Shen et al., NeurIPS 2024): sparse tuning with kernelized LoRA (docs/methods.md#snell).

Per matrix, low-rank A (P, n, r/P) and B (P, m, r/P) define a full-rank delta through the piecewise-linear distance
kernel S = sum_p alpha_p * cdist(A_p, B_p) with P = 2, alpha = (+0.1, -0.1). Every forward keeps only the (1 - s)
largest |S| entries: hard threshold with the magnitude factor as the released code (S * |S| * 1[|S| > tau]), or
the paper's soft threshold (S * max(|S| - tau, 0)). tau is the k-th smallest |S| (kthvalue, not quantile, which
refuses > 2^24 entries; the count of zeroed entries is exactly the released quantile's, or the paper's for the
soft threshold). The dense n x m delta is rebuilt in backward instead of being stored.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from adapterbank.errors import AdapterBankError
from adapterbank.methods.base import Method, MethodConfig
from adapterbank.methods.placements import delta_targets
from adapterbank.methods.pointwise import PointwiseDelta
from adapterbank.methods.weight_cache import WeightCache
from adapterbank.routing import TaskRouter

PIECES = 2


@dataclasses.dataclass
class SNELLConfig(MethodConfig):
    rank: int = 8
    sparsity: float = 0.5  # fraction of delta entries zeroed each forward; 0 = dense kernel LoRA (KLoRA)
    threshold: str = "hard"  # "hard": released code; "soft": paper Eq. 5
    kernel_scale: float = 0.1  # alpha_p = kernel_scale * (+1, -1), fixed as in the released code
    dropout: float = 0.1  # on the delta branch input (not attn.proj's), released code default; q, k, v share a mask
    drop_path: float = 0.1  # per-sample drop of each delta (q, k, v independently), released code default
    recompute: bool = True  # recompute the dense delta in backward (SNELL's memory saving)

    def validate(self) -> None:
        if not isinstance(self.rank, int) or self.rank < PIECES or self.rank % PIECES:
            raise AdapterBankError(
                f"SNELL rank must be a positive even integer (split over {PIECES} kernel pieces), got {self.rank}"
            )
        if not 0.0 <= self.sparsity < 1.0:
            raise AdapterBankError(f"SNELL sparsity must be in [0, 1), got {self.sparsity}")
        if self.threshold not in ("hard", "soft"):
            raise AdapterBankError(f"SNELL threshold must be 'hard' or 'soft', got '{self.threshold}'")
        for name in ("dropout", "drop_path"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise AdapterBankError(f"SNELL {name} must be in [0, 1), got {getattr(self, name)}")


def kernel_matrix(a: torch.Tensor, b: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """a: (S, P, n, d), b: (S, P, m, d) -> (S, n, m) with K_ij = sum_p alpha_p ||a_pi - b_pj||."""
    s, p, n, _ = a.shape
    m = b.shape[2]
    dist = torch.cdist(a.flatten(0, 1), b.flatten(0, 1)).view(s, p, n, m)
    return torch.einsum("spnm,p->snm", dist, alpha)


def zeroed_count(entries: int, sparsity: float, soft: bool) -> int:
    """How many of a matrix's entries the threshold zeroes. Hard (released code): tau = torch.quantile(|S|, s),
    which sits at sorted position s * (N - 1), and entries <= tau go: floor(s * (N - 1)) + 1 of them. Soft
    (paper Eq. 5): tau is the ceil(s * N)-th smallest |S|, and entries <= tau go."""
    if sparsity == 0:
        return 0
    return math.ceil(sparsity * entries) if soft else math.floor(sparsity * (entries - 1)) + 1


def threshold(magnitude: torch.Tensor, sparsity: float, soft: bool) -> torch.Tensor | None:
    """tau per (n, m) matrix as a k-th smallest |S| (kthvalue: quantile refuses > 2^24 entries); None when nothing
    is zeroed."""
    count = zeroed_count(magnitude.shape[1] * magnitude.shape[2], sparsity, soft)
    if count == 0:
        return None
    return magnitude.flatten(1).kthvalue(count, dim=1).values.view(-1, 1, 1)


def keep_factor(magnitude: torch.Tensor, tau: torch.Tensor | None, soft: bool) -> torch.Tensor | float:
    """What each entry of S is multiplied by: |S| 1[|S| > tau] (hard, released code) or max(|S| - tau, 0) (soft)."""
    if tau is None:
        return 1.0
    return (magnitude - tau).clamp_min(0) if soft else magnitude * (magnitude > tau)


def sparsify(k: torch.Tensor, sparsity: float, soft: bool) -> torch.Tensor:
    """Zero the smallest-magnitude entries of each (n, m) matrix (`zeroed_count`), weighting the survivors."""
    magnitude = k.detach().abs()
    return k * keep_factor(magnitude, threshold(magnitude, sparsity, soft), soft)


def sparse_weights(a: torch.Tensor, b: torch.Tensor, alpha: torch.Tensor, sparsity: float, soft: bool) -> torch.Tensor:
    """(S, n, m): the sparsified kernel delta of each of the S blocks."""
    return sparsify(kernel_matrix(a, b, alpha), sparsity, soft)


def apply_weights(x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """x: (..., n) -> (..., S * m)."""
    return torch.einsum("...n,snm->...sm", x, weights).flatten(-2)


def sparse_kernel_delta(
    x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, alpha: torch.Tensor, sparsity: float, soft: bool
) -> torch.Tensor:
    """x: (..., n) -> (..., S * m): x @ sparsified kernel delta for each of the S blocks."""
    return apply_weights(x, sparse_weights(a, b, alpha, sparsity, soft))


def _rng_state(device: torch.device) -> torch.Tensor:
    return torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.get_rng_state()


def _replayed_dropout_scale(like: torch.Tensor, p: float, state: torch.Tensor) -> torch.Tensor:
    """The dropout mask / (1 - p) that F.dropout drew from RNG `state` for a tensor shaped like `like`."""
    devices = [like.device] if like.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        if devices:
            torch.cuda.set_rng_state(state, like.device)
        else:
            torch.set_rng_state(state)
        return F.dropout(torch.ones_like(like), p, training=True)


class SparseKernelBranch(torch.autograd.Function):
    """y = dropout(x) @ W(A, B) without keeping W: backward rebuilds W from A, B and the forward's threshold tau
    (no second k-th value search, no second forward product, unlike generic activation checkpointing) and replays
    the dropout mask from the saved RNG state. Gradients equal autograd's through `sparse_kernel_delta` (|S| in
    the keep factor is treated as a constant, as there).

    Given the frozen Linear's `weight` (and `bias`), it computes the whole layer as one product with W0 + dW
    instead (no dropout then): forward one product instead of two, backward two instead of three.
    """

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(
        ctx: Any,
        x: torch.Tensor,
        a: torch.Tensor,
        b: torch.Tensor,
        alpha: torch.Tensor,
        sparsity: float,
        soft: bool,
        p: float,
        weight: torch.Tensor | None = None,
        bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        with torch.no_grad():
            k = kernel_matrix(a, b, alpha)
            tau = threshold(k.abs(), sparsity, soft)
            weights = k * keep_factor(k.abs(), tau, soft)
            if weight is not None:
                out = F.linear(x, weight + _as_linear_weight(weights).to(weight.dtype), bias)
                state = None
            else:
                state = _rng_state(x.device) if p else None
                out = apply_weights(F.dropout(x, p, training=True) if p else x, weights)
        ctx.save_for_backward(x, a, b, alpha, weight, *(() if tau is None else (tau,)))
        ctx.soft, ctx.p, ctx.state = soft, p, state
        return out

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, a, b, alpha, weight, *tau = ctx.saved_tensors
        with torch.enable_grad():
            a_, b_ = a.detach().requires_grad_(), b.detach().requires_grad_()
            k = kernel_matrix(a_, b_, alpha)
        factor = keep_factor(k.detach().abs(), tau[0] if tau else None, ctx.soft)
        weights = k.detach() * factor
        scale = _replayed_dropout_scale(x, ctx.p, ctx.state) if ctx.p else None
        dropped = x * scale if scale is not None else x
        g = grad.unflatten(-1, (weights.shape[0], weights.shape[2]))
        if weight is not None:
            grad_x = grad @ (weight + _as_linear_weight(weights).to(weight.dtype)).to(grad.dtype)
        else:
            grad_x = torch.einsum("...sm,snm->...n", g, weights.to(g.dtype))
        if scale is not None:
            grad_x = grad_x * scale
        grad_w = torch.einsum("tn,tsm->snm", dropped.reshape(-1, x.shape[-1]), g.reshape(-1, *g.shape[-2:]))
        grad_a, grad_b = torch.autograd.grad(k, (a_, b_), (grad_w.to(k.dtype) * factor))
        return grad_x.to(x.dtype), grad_a, grad_b, None, None, None, None, None, None


def _as_linear_weight(weights: torch.Tensor) -> torch.Tensor:
    """(S, n, m) blocks -> the (S * m, n) delta of a Linear weight (q, k, v blocks stacked along the output)."""
    return weights.transpose(1, 2).reshape(-1, weights.shape[1])


def drop_blocks(delta: torch.Tensor, p: float, splits: int) -> torch.Tensor:
    """DropPath per sample and per output block: the release gives q, k, v (and every other matrix) a TuningModule
    of its own, each with its own DropPath, so the three blocks of a fused qkv are dropped independently."""
    keep = 1.0 - p
    mask = delta.new_empty(delta.shape[0], *(1,) * (delta.ndim - 2), splits, 1).bernoulli_(keep).div_(keep)
    return (delta.unflatten(-1, (splits, -1)) * mask).flatten(-2)


class KernelSparseDelta(PointwiseDelta):
    """`branch_dropout` False: no dropout on this matrix's branch input (the release has none on attn.proj)."""

    def __init__(
        self, base: nn.Module, router: TaskRouter, splits: int, config: SNELLConfig, branch_dropout: bool = True
    ) -> None:
        super().__init__(base, router, splits)
        t, d, n, m = router.num_tasks, config.rank // PIECES, self.in_features, self.block_out
        # kaiming_uniform_(a=sqrt(5)) on the 3-D (P, n, d) tensors: U(+-1/sqrt(n * d))
        self.snell_A = nn.Parameter(torch.empty(t, splits, PIECES, n, d).uniform_(-1, 1) / math.sqrt(n * d))
        self.snell_B = nn.Parameter(torch.empty(t, splits, PIECES, m, d).uniform_(-1, 1) / math.sqrt(m * d))
        signs = torch.tensor([(-1.0) ** p for p in range(PIECES)])
        self.register_buffer("alpha", config.kernel_scale * signs, persistent=False)
        self.sparsity = config.sparsity
        self.soft = config.threshold == "soft"
        self.recompute = config.recompute
        dropout = config.dropout if branch_dropout else 0.0
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.drop_path = config.drop_path
        self.cache: WeightCache | None = None  # set by a runtime: merged weights reused across batches

    def use_weight_cache(self, cache: WeightCache) -> None:
        self.cache = cache

    def _task_delta(self, x: torch.Tensor, task: int) -> torch.Tensor:
        args = (x, self.snell_A[task], self.snell_B[task], self.alpha, self.sparsity, self.soft)
        if torch.is_grad_enabled() and self.snell_A.requires_grad:
            if self.recompute:
                return SparseKernelBranch.apply(*args, self._dropout_p() if self.training else 0.0)
            return sparse_kernel_delta(self.dropout(x), *args[1:])
        return sparse_kernel_delta(*args)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Served by a runtime: each task's rows through its cached merged weight. Training one task without branch
        dropout or DropPath: one product with W0 + dW (see SparseKernelBranch)."""
        if self.cache is not None and not torch.is_grad_enabled():
            return self._serve_merged(x)
        fused = (
            isinstance(self.base, nn.Linear)
            and self.recompute
            and torch.is_grad_enabled()
            and self.snell_A.requires_grad
            and self.router.rows(x.shape[0]) is None
            and not (self.training and (self._dropout_p() or self.drop_path))
        )
        if not fused:
            return super().forward(x)
        task = self.router.task
        args = (x, self.snell_A[task], self.snell_B[task], self.alpha, self.sparsity, self.soft, 0.0)
        return SparseKernelBranch.apply(*args, self.base.weight, self.base.bias)

    def _serve_merged(self, x: torch.Tensor) -> torch.Tensor:
        """One product per task group with W0 + dW_t from the cache: the FLOPs of the plain backbone, where adding
        x @ dW_t beside the shared base product doubles them (the delta is full rank)."""
        rows = self.router.rows(x.shape[0])
        tasks = [self.router.task] if rows is None else rows.unique().tolist()
        if len(tasks) == 1:
            return self.merged_forward(x, self._cached_merged_weight(tasks[0]))
        out: torch.Tensor | None = None
        for task in tasks:
            selected = (rows == task).nonzero().squeeze(1)
            y = self.merged_forward(x.index_select(0, selected), self._cached_merged_weight(task))
            if out is None:
                out = y.new_empty(x.shape[0], *y.shape[1:])
            out[selected] = y
        return out

    def _cached_merged_weight(self, task: int) -> torch.Tensor:
        versions = (self.snell_A._version, self.snell_B._version, self.base.weight._version)
        return self.cache.get((self.stacks_serial, task, *versions), lambda: self.merged_weight(task))

    def _dropout_p(self) -> float:
        return self.dropout.p if isinstance(self.dropout, nn.Dropout) else 0.0

    def delta(self, x: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
        if rows is None:
            out = self._task_delta(x, self.router.task)
        else:
            out = x.new_zeros(*x.shape[:-1], self.splits * self.block_out)
            for task in rows.unique().tolist():
                selected = (rows == task).nonzero().squeeze(1)
                out = out.index_add(0, selected, self._task_delta(x.index_select(0, selected), task))
        return drop_blocks(out, self.drop_path, self.splits) if self.training and self.drop_path else out

    def delta_weight(self, task: int) -> torch.Tensor:
        weights = sparsify(
            kernel_matrix(self.snell_A[task].float(), self.snell_B[task].float(), self.alpha), self.sparsity, self.soft
        )
        return _as_linear_weight(weights)


class SNELL(Method):
    name = "snell"
    summary = "kernelized sparse weight deltas (Shen et al. 2024); merges into the backbone"
    config_type = SNELLConfig
    multi_task_graph = False  # a graph would materialize every task's dense delta: export tasks one by one
    caches_derived_weights = True

    def attach(self, model: nn.Module, config: SNELLConfig, router: TaskRouter) -> None:
        for path, splits in delta_targets(model):
            branch_dropout = not path.endswith("attn.proj")
            module = KernelSparseDelta(model.get_submodule(path), router, splits, config, branch_dropout)
            model.set_submodule(path, module)
