"""One batch mixing tasks computes every sample with its own task's parameters."""

from __future__ import annotations

import copy

import pytest
import torch

from adapterbank import AdapterBankError, TunedModel, create_backbone, tune
from adapterbank.inspection import perturb_task_parameters
from adapterbank.method_names import METHOD_NAMES
from tests.helpers import FAMILIES, MERGEABLE, assert_close_relative, images

CLASSES = [5, 3, 7]
TASK_IDS = torch.tensor([2, 0, 1, 2])


@pytest.mark.parametrize("arch", FAMILIES)
@pytest.mark.parametrize("method", [*MERGEABLE, "linear"])
def test_mixed_batch_equals_each_sample_alone(arch: str, method: str) -> None:
    model = tune(arch, method, CLASSES).eval()
    perturb_task_parameters(model, std=0.05)
    x = images(len(TASK_IDS))
    with torch.no_grad():
        mixed = model(x, TASK_IDS)
        assert mixed.shape == (len(TASK_IDS), max(CLASSES))
        for i, task in enumerate(TASK_IDS.tolist()):
            c = CLASSES[task]
            alone = model(x[i : i + 1], torch.tensor([task]))
            assert_close_relative(mixed[i : i + 1, :c], alone[:, :c])
            assert_close_relative(mixed[i : i + 1, :c], model.merge(task)(x[i : i + 1]))
            assert torch.isneginf(mixed[i, c:]).all()


def test_tasks_really_differ() -> None:
    model = tune("vit_tiny_patch16_224", "ssf", [4, 4]).eval()
    perturb_task_parameters(model, std=0.05)
    x = images(1)
    with torch.no_grad():
        assert (model(x, torch.tensor([0])) - model(x, torch.tensor([1]))).abs().max() > 1e-3


def test_state_round_trips_between_task_slots() -> None:
    backbone = create_backbone("convnext_atto")
    source = TunedModel(copy.deepcopy(backbone), "convnext_atto", "lora", [6]).eval()
    perturb_task_parameters(source, std=0.05)
    target = TunedModel(copy.deepcopy(backbone), "convnext_atto", "lora", [3, 6]).eval()
    target.load_state(source.state(0), task=1)
    x = images(2)
    with torch.no_grad():
        assert torch.allclose(target(x, torch.tensor([1, 1])), source(x), atol=1e-5, rtol=1e-5)


def test_bad_task_ids_and_full_refuse() -> None:
    model = tune("vit_tiny_patch16_224", "bitfit", [2, 2]).eval()
    with pytest.raises(AdapterBankError, match="task ids"):
        model(images(1), torch.tensor([2]))
    with pytest.raises(AdapterBankError, match="pass task_ids"):
        model(images(1))
    with pytest.raises(AdapterBankError, match="cannot hold several tasks"):
        tune("vit_tiny_patch16_224", "full", [2, 2])


def test_load_state_refuses_missing_and_misshaped() -> None:
    model = tune("vit_tiny_patch16_224", "ssf", 4)
    state = model.state(0)
    key = "blocks.0.attn.qkv.ssf_scale"
    with pytest.raises(AdapterBankError, match="missing tensor"):
        model.load_state({k: v for k, v in state.items() if k != key})
    with pytest.raises(AdapterBankError, match="has shape"):
        model.load_state({**state, key: state[key][:-1]})


@pytest.mark.parametrize("method", ["ssf", "bitfit"])
@pytest.mark.parametrize("kind", ["layernorm", "linear", "batchnorm"])
def test_folded_task_affine_matches_the_plain_composition(method: str, kind: str) -> None:
    """The module's own affine folded into the task's (one pass) equals module output, then task affine: values
    and gradients in training, values at inference (where the pass runs in place)."""
    torch.manual_seed(0)
    arch, path = {
        "layernorm": ("vit_tiny_patch16_224", "blocks.0.norm1"),
        "linear": ("vit_tiny_patch16_224", "blocks.0.mlp.fc1"),
        "batchnorm": ("tf_efficientnet_lite0", "blocks.1.0.bn1"),
    }[kind]
    model = tune(arch, method, [3, 3]).eval()
    perturb_task_parameters(model, std=0.1)
    module = model.model.get_submodule(path)
    for p in module.base.parameters():  # frozen affine away from identity, so that folding it matters
        p.data.normal_(0.5, 0.2)
    params = [p for p in module.parameters() if p.requires_grad]  # the task's tensors only
    channels_in = module.base.weight.shape[-1]  # Linear: in_features; norms: their channels
    x = torch.randn(4, channels_in, 8, 8) if kind == "batchnorm" else torch.randn(4, 5, channels_in)
    ids = torch.tensor([1, 0, 0, 1])
    view = (4, -1, 1, 1) if kind == "batchnorm" else (4, 1, -1)
    with model.router.route(ids):
        folded = module(x)
        grads = torch.autograd.grad(folded.square().sum(), params)
        with torch.no_grad():
            in_place = module(x)
    scale, shift = module.task_affine()
    base_out = module.base(x) if kind != "batchnorm" else torch.nn.BatchNorm2d.forward(module.base, x)
    plain = base_out * (1 if scale is None else scale[ids].reshape(view)) + shift[ids].reshape(view)
    plain = module.base.act(plain) if kind == "batchnorm" else plain
    expected = torch.autograd.grad(plain.square().sum(), params)
    assert torch.allclose(folded, plain, atol=1e-5, rtol=1e-5) and torch.allclose(in_place, plain, atol=1e-5)
    for got, want in zip(grads, expected, strict=True):
        assert torch.allclose(got, want, atol=1e-4, rtol=1e-4)


ONE_TASK_CASES = [("vit_tiny_patch16_224", m) for m in sorted(set(METHOD_NAMES) - {"full"})] + [
    ("convnext_atto", m) for m in ("lora", "ssf", "snell", "adapter")
]


@pytest.mark.parametrize(("arch", "method"), ONE_TASK_CASES)
def test_a_one_task_batch_runs_as_its_slot_alone_with_the_gradients_of_the_mixed_path(arch: str, method: str) -> None:
    """A batch of one task's samples takes that slot's tensors directly (no per-row gathers): the same logits and the
    same gradients as routing it row by row, and no gradient reaches another task's slot."""
    model = tune(arch, method, CLASSES).eval()  # no dropout draws: the two paths see the same computation
    perturb_task_parameters(model, std=0.05)
    params = [p for p in model.parameters() if p.requires_grad]
    x, task = images(3), 2
    ids = torch.full((3,), task)
    fast = model(x, ids)
    assert model.router.rows(3) is None and fast.shape == (3, CLASSES[task])
    fast_grads = torch.autograd.grad(fast.square().sum(), params)
    with model.router.route(ids):  # the mixed path, forced
        routed = model.model(x)[:, : CLASSES[task]]
    routed_grads = torch.autograd.grad(routed.square().sum(), params)
    assert_close_relative(fast, routed)
    for p, got, want in zip(params, fast_grads, routed_grads, strict=True):
        assert_close_relative(got, want, tol=1e-4)
        if p.ndim and p.shape[0] == len(CLASSES):  # stacked per task: the others' slots stay untouched
            assert not got[:task].any() and got[task].any()
