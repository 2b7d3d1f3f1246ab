"""Merging folds a task into plain timm weights: same logits, same modules, same parameter count as the bare model."""

from __future__ import annotations

import pytest
import timm
import torch

from adapterbank import tune
from adapterbank.inspection import perturb_task_parameters, same_structure
from tests.helpers import FAMILIES, MERGEABLE, assert_close_relative, images


@pytest.mark.parametrize("arch", FAMILIES)
@pytest.mark.parametrize("method", [*MERGEABLE, "linear", "full"])
def test_merged_equals_tuned_and_bare(arch: str, method: str) -> None:
    model = tune(arch, method, 7).eval()
    perturb_task_parameters(model, std=0.05)
    x = images(2)
    with torch.no_grad():
        tuned = model(x)
        merged = model.merge(0)
        assert_close_relative(merged(x), tuned)
    bare = timm.create_model(arch, num_classes=7)
    assert same_structure(merged, bare)
    assert sum(p.numel() for p in merged.parameters()) == sum(p.numel() for p in bare.parameters())


def test_merge_leaves_the_tuned_model_untouched() -> None:
    model = tune("vit_tiny_patch16_224", "ssf", 3).eval()
    perturb_task_parameters(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.merge(0)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_perturbation_changes_logits() -> None:
    """Guards the merge tests: perturbed task parameters really move the output away from the frozen model."""
    model = tune("vit_tiny_patch16_224", "lora", 3).eval()
    x = images(1)
    with torch.no_grad():
        before = model(x)
        perturb_task_parameters(model, std=0.05)
        assert (model(x) - before).abs().max() > 1e-3
