"""Golden tests: each method's defining maths written out independently here (plain numpy, loops where the paper
writes a sum) from the published formulas, on small fixed tensors, and compared with what adapterbank merges.

SNELL (released code ssfgunner/SNELL, `SNELL.sparsify`, and paper Eq. 5):
    S_ij = sum_p alpha_p ||a_i^(p) - b_j^(p)||_2 with alpha = (+0.1, -0.1), S in R^{in x out}
    hard (code):  tau = quantile(|S|, s) (linear interpolation), S^s = S * |S| * 1[|S| > tau]
    soft (paper): tau = the ceil(s * m * n)-th smallest |S|,       S^s = S * max(|S| - tau, 0)
    merged weight = W0 + (S^s)^T
SSF: gamma * op(x) + beta folded into Linear / Conv / LayerNorm / BatchNorm as W' = diag(gamma) W, b' = gamma b + beta.
LoRA: W' = W0 + (alpha / r) B A per block (q, k, v blocks of a fused qkv each their own factors). BitFit: b' = b_task.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from adapterbank.methods.bitfit import TaskBias
from adapterbank.methods.lora import LoRAConfig, LowRankDelta
from adapterbank.methods.snell import KernelSparseDelta, SNELLConfig
from adapterbank.methods.ssf import ScaleShift
from adapterbank.routing import TaskRouter

N_IN, N_OUT, RANK = 6, 5, 4  # SNELL: two kernel pieces of RANK / 2 columns each


def fixed(shape: tuple[int, ...], seed: int, scale: float = 1.0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape) * scale


def golden_kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """S[i, j] = 0.1 ||a_1i - b_1j|| - 0.1 ||a_2i - b_2j||, one entry at a time."""
    alpha = (0.1, -0.1)
    n, m = a.shape[1], b.shape[1]
    s = np.zeros((n, m))
    for i in range(n):
        for j in range(m):
            s[i, j] = sum(alpha[p] * math.sqrt(((a[p, i] - b[p, j]) ** 2).sum()) for p in range(2))
    return s


def golden_sparse_delta(s: np.ndarray, sparsity: float, threshold: str) -> np.ndarray:
    magnitude = np.abs(s)
    if threshold == "hard":
        tau = np.quantile(magnitude, sparsity)  # torch.quantile's default (linear) interpolation
        return s * magnitude * (magnitude > tau)
    tau = np.sort(magnitude, axis=None)[math.ceil(sparsity * s.size) - 1]
    return s * np.maximum(magnitude - tau, 0.0)


def snell_layer(threshold: str, sparsity: float) -> tuple[KernelSparseDelta, np.ndarray, np.ndarray, np.ndarray]:
    base = nn.Linear(N_IN, N_OUT)
    config = SNELLConfig(rank=RANK, sparsity=sparsity, threshold=threshold)
    layer = KernelSparseDelta(base, TaskRouter(1), 1, config).eval()  # merges in fp32, as the bank stores
    a, b = fixed((2, N_IN, RANK // 2), 1), fixed((2, N_OUT, RANK // 2), 2)
    with torch.no_grad():
        layer.snell_A[0, 0].copy_(torch.from_numpy(a))
        layer.snell_B[0, 0].copy_(torch.from_numpy(b))
    return layer, a, b, base.weight.detach().double().numpy()


@pytest.mark.parametrize("threshold", ["hard", "soft"])
@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.45, 0.5, 0.9])
def test_snell_merged_weight_is_the_published_kernel_delta(threshold: str, sparsity: float) -> None:
    layer, a, b, w0 = snell_layer(threshold, sparsity)
    s = golden_kernel(a, b)
    expected = s if sparsity == 0 else golden_sparse_delta(s, sparsity, threshold)
    merged = layer.merged(0).weight.detach().double().numpy()
    np.testing.assert_allclose(merged, w0 + expected.T, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(merged != w0, expected.T != 0)  # the sparsity pattern itself
    with torch.no_grad():  # the forward path computes the same layer
        x = torch.from_numpy(fixed((3, N_IN), 3)).float()
        np.testing.assert_allclose(layer(x).numpy(), layer.merged(0)(x).numpy(), rtol=0, atol=1e-6)


def test_snell_golden_data_separates_the_thresholds() -> None:
    """Guards the test above: on this data the two thresholds and the dense delta all differ."""
    s = golden_kernel(fixed((2, N_IN, RANK // 2), 1), fixed((2, N_OUT, RANK // 2), 2))
    hard, soft = golden_sparse_delta(s, 0.45, "hard"), golden_sparse_delta(s, 0.45, "soft")
    assert not np.allclose(hard, soft) and not np.allclose(hard, s) and (hard == 0).sum() == (soft == 0).sum()


def test_snell_kernel_pieces_are_the_first_and_second_halves_of_the_rank() -> None:
    """Fused qkv: each of q, k, v is its own (A, B) pair and its block of output rows."""
    base = nn.Linear(N_IN, 3 * N_OUT)
    layer = KernelSparseDelta(base, TaskRouter(1), 3, SNELLConfig(rank=RANK, sparsity=0.3)).eval()
    expected = []
    for block in range(3):
        a, b = fixed((2, N_IN, RANK // 2), 10 + block), fixed((2, N_OUT, RANK // 2), 20 + block)
        with torch.no_grad():
            layer.snell_A[0, block].copy_(torch.from_numpy(a))
            layer.snell_B[0, block].copy_(torch.from_numpy(b))
        expected.append(golden_sparse_delta(golden_kernel(a, b), 0.3, "hard").T)
    delta = layer.merged(0).weight.detach().double().numpy() - base.weight.detach().double().numpy()
    np.testing.assert_allclose(delta, np.concatenate(expected), rtol=0, atol=1e-6)


def scale_shift(base: nn.Module, channels: int) -> tuple[ScaleShift, np.ndarray, np.ndarray]:
    layer = ScaleShift(base, TaskRouter(1), init_std=0.02).double().eval()
    gamma, beta = 1 + fixed((channels,), 4, 0.3), fixed((channels,), 5, 0.3)
    with torch.no_grad():
        layer.ssf_scale[0].copy_(torch.from_numpy(gamma))
        layer.ssf_shift[0].copy_(torch.from_numpy(beta))
    return layer, gamma, beta


def test_ssf_merges_into_linear() -> None:
    base = nn.Linear(N_IN, N_OUT).double()
    w, bias = base.weight.detach().numpy().copy(), base.bias.detach().numpy().copy()
    layer, gamma, beta = scale_shift(base, N_OUT)
    merged = layer.merged(0)
    np.testing.assert_allclose(merged.weight.detach().numpy(), gamma[:, None] * w, rtol=1e-6)
    np.testing.assert_allclose(merged.bias.detach().numpy(), gamma * bias + beta, rtol=1e-6)
    x = torch.from_numpy(fixed((2, N_IN), 6))
    with torch.no_grad():
        np.testing.assert_allclose(layer(x).numpy(), gamma * (x.numpy() @ w.T + bias) + beta, rtol=1e-6)


def test_ssf_merges_into_conv_per_output_filter() -> None:
    base = nn.Conv2d(3, N_OUT, 3).double()
    w, bias = base.weight.detach().numpy().copy(), base.bias.detach().numpy().copy()
    layer, gamma, beta = scale_shift(base, N_OUT)
    merged = layer.merged(0)
    np.testing.assert_allclose(merged.weight.detach().numpy(), gamma[:, None, None, None] * w, rtol=1e-6)
    np.testing.assert_allclose(merged.bias.detach().numpy(), gamma * bias + beta, rtol=1e-6)
    x = torch.from_numpy(fixed((2, 3, 5, 5), 7))
    with torch.no_grad():
        plain = base(x).numpy()
        np.testing.assert_allclose(layer(x).numpy(), gamma[:, None, None] * plain + beta[:, None, None], rtol=1e-6)


def test_ssf_merges_into_layernorm() -> None:
    base = nn.LayerNorm(N_OUT).double()
    with torch.no_grad():
        base.weight.copy_(torch.from_numpy(1 + fixed((N_OUT,), 8, 0.2)))
        base.bias.copy_(torch.from_numpy(fixed((N_OUT,), 9, 0.2)))
    g, h = base.weight.detach().numpy().copy(), base.bias.detach().numpy().copy()
    layer, gamma, beta = scale_shift(base, N_OUT)
    merged = layer.merged(0)
    np.testing.assert_allclose(merged.weight.detach().numpy(), gamma * g, rtol=1e-6)
    np.testing.assert_allclose(merged.bias.detach().numpy(), gamma * h + beta, rtol=1e-6)
    x = fixed((2, N_OUT), 10)
    normalized = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + base.eps)
    with torch.no_grad():
        np.testing.assert_allclose(layer(torch.from_numpy(x)).numpy(), gamma * (g * normalized + h) + beta, rtol=1e-6)


def test_ssf_merges_into_batchnorm_keeping_its_statistics() -> None:
    base = nn.BatchNorm2d(N_OUT).double().eval()
    with torch.no_grad():
        base.running_mean.copy_(torch.from_numpy(fixed((N_OUT,), 11)))
        base.running_var.copy_(torch.from_numpy(1 + np.abs(fixed((N_OUT,), 12))))
        base.weight.copy_(torch.from_numpy(1 + fixed((N_OUT,), 13, 0.2)))
        base.bias.copy_(torch.from_numpy(fixed((N_OUT,), 14, 0.2)))
    stats = base.running_mean.numpy().copy(), base.running_var.numpy().copy()
    g, h = base.weight.detach().numpy().copy(), base.bias.detach().numpy().copy()
    layer, gamma, beta = scale_shift(base, N_OUT)
    merged = layer.merged(0)
    np.testing.assert_allclose(merged.weight.detach().numpy(), gamma * g, rtol=1e-6)
    np.testing.assert_allclose(merged.bias.detach().numpy(), gamma * h + beta, rtol=1e-6)
    np.testing.assert_array_equal(merged.running_mean.numpy(), stats[0])
    np.testing.assert_array_equal(merged.running_var.numpy(), stats[1])
    x = fixed((2, N_OUT, 3, 3), 15)
    c = (slice(None), None, None)
    bn = g[c] * (x - stats[0][c]) / np.sqrt(stats[1][c] + base.eps) + h[c]
    with torch.no_grad():
        np.testing.assert_allclose(layer(torch.from_numpy(x)).numpy(), gamma[c] * bn + beta[c], rtol=1e-6)


@pytest.mark.parametrize(("rank", "alpha"), [(2, None), (2, 8.0)])
def test_lora_merged_weight_is_scaled_b_times_a_per_block(rank: int, alpha: float | None) -> None:
    base = nn.Linear(N_IN, 3 * N_OUT).double()
    w0 = base.weight.detach().numpy().copy()
    layer = LowRankDelta(base, TaskRouter(1), 3, LoRAConfig(rank=rank, alpha=alpha)).double().eval()
    blocks = []
    for block in range(3):
        a, b = fixed((rank, N_IN), 30 + block), fixed((N_OUT, rank), 40 + block)
        with torch.no_grad():
            layer.lora_A[0, block].copy_(torch.from_numpy(a))
            layer.lora_B[0, block].copy_(torch.from_numpy(b))
        blocks.append(((alpha or rank) / rank) * b @ a)
    np.testing.assert_allclose(
        layer.merged(0).weight.detach().numpy(), w0 + np.concatenate(blocks), rtol=1e-6, atol=1e-6
    )
    x = torch.from_numpy(fixed((2, N_IN), 50))
    with torch.no_grad():
        expected = x.numpy() @ (w0 + np.concatenate(blocks)).T + base.bias.detach().numpy()
        np.testing.assert_allclose(layer(x).numpy(), expected, rtol=1e-6)


def test_bitfit_merged_bias_is_the_task_bias() -> None:
    base = nn.Linear(N_IN, N_OUT).double()
    w0 = base.weight.detach().numpy().copy()
    layer = TaskBias(base, TaskRouter(1)).double().eval()
    task_bias = fixed((N_OUT,), 60)
    with torch.no_grad():
        layer.bias[0].copy_(torch.from_numpy(task_bias))
    merged = layer.merged(0)
    np.testing.assert_array_equal(merged.weight.detach().numpy(), w0)
    np.testing.assert_allclose(merged.bias.detach().numpy(), task_bias, rtol=1e-6)
    x = torch.from_numpy(fixed((2, N_IN), 61))
    with torch.no_grad():
        np.testing.assert_allclose(layer(x).numpy(), x.numpy() @ w0.T + task_bias, rtol=1e-6)
