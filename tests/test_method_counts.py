"""Trainable parameter counts against the papers (docs/methods.md#parameter-counts), and that nothing else trains."""

from __future__ import annotations

import pytest

from adapterbank import tune
from adapterbank.methods.base import task_modules

VIT_B = "vit_base_patch16_224"
HEAD_100 = 768 * 100 + 100


def test_ssf_vit_base_matches_paper() -> None:
    model = tune(VIT_B, "ssf", 100)
    assert model.num_trainable(include_head=False) == 205_824
    assert model.num_trainable() == 205_824 + HEAD_100


@pytest.mark.parametrize("method", ["snell", "lora"])
@pytest.mark.parametrize("rank", [8, 16])
def test_delta_methods_per_vit_base_block(method: str, rank: int) -> None:
    model = tune(VIT_B, method, 100, rank=rank)
    per_block = sum(v.numel() for k, v in model.state(0).items() if k.startswith("blocks.0."))
    assert per_block == 13_824 * rank
    assert model.num_trainable(include_head=False) == 12 * 13_824 * rank


@pytest.mark.parametrize("method", ["snell", "ssf", "lora", "bitfit", "linear"])
def test_only_method_parameters_and_head_train(method: str) -> None:
    model = tune("vit_tiny_patch16_224", method, 10)
    owned = {
        f"{path}.{name}"
        for path, module in task_modules(model.model)
        for name, _ in module.named_parameters(recurse=False)
    }
    trainable = {name for name, _ in model.trainable_parameters()}
    assert trainable == owned
    assert {"head.weight", "head.bias"} <= trainable
    frozen = [n for n, p in model.model.named_parameters() if n not in owned]
    assert frozen and not any(model.model.get_parameter(n).requires_grad for n in frozen)


def test_bitfit_tunes_every_backbone_bias() -> None:
    model = tune("vit_tiny_patch16_224", "bitfit", 10)
    bare_biases = sum(
        p.numel()
        for n, p in tune("vit_tiny_patch16_224", "linear", 10).model.named_parameters()
        if n.endswith("bias") and not n.startswith("head.")
    )
    assert model.num_trainable(include_head=False) == bare_biases


def test_full_trains_everything() -> None:
    model = tune("vit_tiny_patch16_224", "full", 10)
    assert all(p.requires_grad for p in model.model.parameters())
