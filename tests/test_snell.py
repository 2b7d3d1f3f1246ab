"""SNELL's defining properties: exact sparsity per matrix, gradients through the kernel, no stored dense delta."""

from __future__ import annotations

import pytest
import torch

from adapterbank import AdapterBankError, tune
from adapterbank.methods.snell import KernelSparseDelta, kernel_matrix
from tests.helpers import images


def snell_modules(model) -> list[KernelSparseDelta]:
    return [m for m in model.model.modules() if isinstance(m, KernelSparseDelta)]


@pytest.mark.parametrize("sparsity", [0.3, 0.9, 0.995])
@pytest.mark.parametrize("threshold", ["hard", "soft"])
def test_zero_fraction_equals_sparsity_in_every_matrix(sparsity: float, threshold: str) -> None:
    """Exactly s * N entries go (within the rounding of s * N), and more only where |S| ties the threshold: float32
    kernels of 150k entries do hold equal magnitudes now and then, and the released `>` zeroes every tied one."""
    model = tune("vit_tiny_patch16_224", "snell", 3, sparsity=sparsity, threshold=threshold).eval()
    for module in snell_modules(model):
        with torch.no_grad():  # the forward path itself: identity input reads the delta matrix out row by row
            delta = module.delta(torch.eye(module.in_features), None)
            kernels = kernel_matrix(module.snell_A[0], module.snell_B[0], module.alpha)
        for block, kernel in zip(delta.split(module.block_out, dim=1), kernels, strict=True):
            zeros = (block == 0).sum().item()
            magnitudes = kernel.abs().flatten().sort().values
            at_threshold = (magnitudes == magnitudes[round(sparsity * magnitudes.numel()) - 1]).sum().item()
            assert abs(zeros - sparsity * block.numel()) <= at_threshold


def test_sparsity_zero_is_dense_kernel_lora() -> None:
    model = tune("vit_tiny_patch16_224", "snell", 3, sparsity=0.0).eval()
    module = snell_modules(model)[0]
    with torch.no_grad():
        assert (module.delta(torch.eye(module.in_features), None) != 0).all()


def test_gradients_reach_a_and_b() -> None:
    # no DropPath here: with it a module may drop both samples' deltas, and its gradient is rightly zero
    model = tune("vit_tiny_patch16_224", "snell", 3, sparsity=0.7, drop_path=0.0).train()
    model(images(2)).logsumexp(-1).sum().backward()
    for module in snell_modules(model):
        assert module.snell_A.grad is not None and module.snell_A.grad.abs().sum() > 0
        assert module.snell_B.grad is not None and module.snell_B.grad.abs().sum() > 0


def _saved_dense_deltas(recompute: bool) -> int:
    """How many tensors shaped like a dense SNELL delta autograd keeps from one training forward."""
    model = tune("vit_tiny_patch16_224", "snell", 3, sparsity=0.5, recompute=recompute).train()
    shapes = set()
    for m in snell_modules(model):
        n, out = m.in_features, m.block_out
        shapes |= {(m.splits, n, out), (n, out), (out, n), (m.splits, out, n)}
    found = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal found
        found += int(t.requires_grad and tuple(t.shape) in shapes)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(images(2)).sum().backward()
    return found


def test_dense_delta_is_not_saved_for_backward() -> None:
    assert _saved_dense_deltas(recompute=False) > 0  # the detector sees it when it is stored
    assert _saved_dense_deltas(recompute=True) == 0


@pytest.mark.parametrize("arch", ["convnext_atto", "vit_tiny_patch16_224"])
@pytest.mark.parametrize(("dropout", "threshold"), [(0.0, "hard"), (0.1, "hard"), (0.1, "soft")])
def test_rebuilt_delta_gives_autograds_gradients(arch: str, dropout: float, threshold: str) -> None:
    """SparseKernelBranch (W rebuilt in backward from the saved threshold, dropout mask replayed) against plain
    autograd through the stored dense delta, with the same random draws."""
    grads = []
    for recompute in (True, False):
        torch.manual_seed(1)
        options = {"recompute": recompute, "dropout": dropout, "drop_path": dropout, "threshold": threshold}
        model = tune(arch, "snell", 3, sparsity=0.4, **options).train()
        x = images(2).requires_grad_()
        model(x).square().sum().backward()
        grads.append(
            torch.cat(
                [x.grad.flatten()] + [p.grad.flatten() for m in snell_modules(model) for p in (m.snell_A, m.snell_B)]
            )
        )
    assert grads[0].abs().max() > 0
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    ("options", "message"),
    [({"rank": 7}, "even"), ({"rank": 0}, "even"), ({"sparsity": 1.0}, r"\[0, 1\)"), ({"sparsity": -0.1}, r"\[0, 1\)")],
)
def test_bad_options_refused(options: dict, message: str) -> None:
    with pytest.raises(AdapterBankError, match=message):
        tune("vit_tiny_patch16_224", "snell", 3, **options)


@pytest.mark.parametrize(("dropout", "fused"), [(0.0, True), (0.1, False)])
def test_training_without_branch_dropout_is_one_product(dropout: float, fused: bool) -> None:
    """No branch dropout or DropPath: each tuned Linear runs as one product with W0 + dW, never calling the frozen
    layer on its own; with dropout the branch stays separate (the released code's form)."""
    model = tune("vit_tiny_patch16_224", "snell", 3, dropout=dropout, drop_path=dropout).train()
    calls = []
    for module in snell_modules(model):
        module.base.register_forward_hook(lambda *_: calls.append(1))
    model(images(2)).sum().backward()
    assert (len(calls) == 0) == fused
    assert all(m.snell_A.grad is not None for m in snell_modules(model))


def test_branch_dropout_as_released_none_on_attn_proj_and_one_mask_for_qkv() -> None:
    """ssfgunner/SNELL model/vision_transformer_timm.py: one dropout call feeds the q, k and v branches, fc1 and
    fc2 each get their own, attn.proj's branch has none."""
    model = tune("vit_tiny_patch16_224", "snell", 3, dropout=0.1)
    modules = dict(model.model.named_modules())
    dropout = {path: m._dropout_p() for path, m in modules.items() if isinstance(m, KernelSparseDelta)}
    assert {p.rsplit(".", 1)[-1]: v for p, v in dropout.items() if p.startswith("blocks.0.")} == {
        "qkv": 0.1,
        "proj": 0.0,
        "fc1": 0.1,
        "fc2": 0.1,
    }


def test_drop_path_drops_q_k_v_independently() -> None:
    """Each of q, k, v is a TuningModule with its own DropPath(0.1) in the release: per sample, some samples lose
    one block of the fused qkv delta but keep another."""
    torch.manual_seed(0)
    model = tune("vit_tiny_patch16_224", "snell", 3, dropout=0.0, drop_path=0.5).train()
    module = snell_modules(model)[0]  # blocks.0.attn.qkv, three output blocks
    x = torch.randn(64, 5, module.in_features)
    with torch.no_grad():
        full = module._task_delta(x, 0).unflatten(-1, (3, -1))
        dropped = module.delta(x, None).unflatten(-1, (3, -1))
    kept = (dropped.abs().sum((1, 3)) > 0).float()  # (samples, blocks)
    torch.testing.assert_close(dropped, full * kept[:, None, :, None] * 2.0)
    assert ((kept.sum(1) > 0) & (kept.sum(1) < 3)).any()
    assert 0.3 < kept.mean().item() < 0.7
