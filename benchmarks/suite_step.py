"""Is a suite's mixed step dearer than its tasks' separate steps? One SSF fwd + bwd on EfficientNet-Lite0 at 112 px:
five single-task batches of 32 against one batch of 160 (one task, and mixed over five task slots).

    .venv/bin/python benchmarks/suite_step.py
"""

from __future__ import annotations

import time

import torch

from adapterbank import TunedModel, tune


def seconds_per_step(model: TunedModel, images: torch.Tensor, task_ids: torch.Tensor | None, repeats: int = 4) -> float:
    """Mean fwd + bwd time after one warm-up step."""
    model.train()
    started = 0.0
    for i in range(repeats + 1):
        if i == 1:
            started = time.perf_counter()
        model(images, task_ids=task_ids).logsumexp(-1).sum().backward()
    return (time.perf_counter() - started) / repeats


def main() -> None:
    torch.manual_seed(0)
    one, five = tune("tf_efficientnet_lite0", "ssf", 10), tune("tf_efficientnet_lite0", "ssf", [10] * 5)
    small, large = torch.randn(32, 3, 112, 112), torch.randn(160, 3, 112, 112)
    separate = 5 * seconds_per_step(one, small, None)
    one_task = seconds_per_step(one, large, None)
    mixed = seconds_per_step(five, large, torch.arange(5).repeat_interleave(32))
    print(f"5 x batch 32, one task: {separate:.2f} s")
    print(f"batch 160, one task: {one_task:.2f} s ({one_task / separate:.2f}x)")
    print(f"batch 160 mixed over 5 task slots: {mixed:.2f} s ({mixed / separate:.2f}x)")


if __name__ == "__main__":
    main()
