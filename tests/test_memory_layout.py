"""A CNN's images run stored channels last (faster on CPU): the same logits and gradients as channels first, for
every method a CNN takes, one task or mixed, and LoRA keeps the layout instead of converting back.

Compared in float64: in float32 either layout's gradients are ~1% from float64's on a random-init EfficientNet
(ReLU6's kinks and sums that cancel), so float32 cannot tell a layout bug from rounding; float64 agrees to 1e-14."""

from __future__ import annotations

import pytest
import torch

from adapterbank import tune
from adapterbank.inspection import perturb_task_parameters
from adapterbank.methods.lora import LowRankDelta
from tests.helpers import assert_close_relative, images

CNN = "tf_efficientnet_lite0"
LAST = torch.channels_last
CLASSES = [5, 3]
TASK_IDS = torch.tensor([1, 0, 1])


def _logits_and_grads(model: torch.nn.Module, channels_last: bool, task_ids: torch.Tensor | None):
    model.channels_last = channels_last
    model.zero_grad()
    logits = model(images(len(TASK_IDS)).double(), task_ids)
    logits[torch.isfinite(logits)].square().sum().backward()
    grads = {n: p.grad.clone() for n, p in model.trainable_parameters()}
    return logits.detach(), grads


CASES = [(m, mixed) for m in ["linear", "full", "bitfit", "ssf", "lora", "snell", "adapter"] for mixed in (False, True)]


@pytest.mark.parametrize(("method", "mixed"), [c for c in CASES if c != ("full", True)])  # full holds one task
def test_channels_last_computes_what_channels_first_does(method: str, mixed: bool) -> None:
    classes = CLASSES if mixed else [CLASSES[0]]
    model = tune(CNN, method, classes).eval().double()  # eval: no dropout, so the two passes draw nothing
    assert model.channels_last
    perturb_task_parameters(model, std=0.05)
    task_ids = TASK_IDS if len(classes) > 1 else None
    first_logits, first_grads = _logits_and_grads(model, False, task_ids)
    last_logits, last_grads = _logits_and_grads(model, True, task_ids)
    finite = torch.isfinite(first_logits)  # a mixed batch's classes beyond a task's own are -inf
    assert torch.equal(torch.isfinite(last_logits), finite)
    assert_close_relative(last_logits[finite], first_logits[finite], tol=1e-12)
    assert first_grads.keys() == last_grads.keys()
    for name, grad in first_grads.items():
        assert_close_relative(last_grads[name], grad, tol=1e-12)


@pytest.mark.parametrize("method", ["bitfit", "ssf", "lora", "snell", "adapter"])
def test_every_convolution_of_a_training_cnn_sees_channels_last(method: str) -> None:
    """The layout reaches every layer: no method's module converts the feature maps back to channels first."""
    model = tune(CNN, method, CLASSES).train()
    convolutions = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    layouts: list[bool] = []
    hooks = [
        c.register_forward_pre_hook(lambda _, args: layouts.append(args[0].is_contiguous(memory_format=LAST)))
        for c in convolutions
    ]
    try:
        model(images(2), torch.tensor([0, 1])).sum().backward()
    finally:
        for hook in hooks:
            hook.remove()
    assert len(layouts) == len(convolutions) and all(layouts)


def test_lora_keeps_the_channels_last_layout() -> None:
    model = tune(CNN, "lora", CLASSES).eval()
    delta = next(m for _, m in model.named_modules() if isinstance(m, LowRankDelta) and m.is_conv)
    x = torch.randn(2, delta.in_features, 7, 7).contiguous(memory_format=torch.channels_last)
    for task_ids in (None, torch.tensor([0, 1])):
        for training in (True, False):  # a new sum (autograd) or the base product's output updated in place
            with torch.set_grad_enabled(training), model.router.route(task_ids, 0):
                out = delta(x)
                expected = delta(x.contiguous())
            assert out.is_contiguous(memory_format=torch.channels_last)
            assert_close_relative(out, expected)


def test_a_vit_keeps_its_layout() -> None:
    assert not tune("vit_tiny_patch16_224", "lora", [2]).channels_last
