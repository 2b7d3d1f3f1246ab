"""Per-sample task routing: how every tuned module learns which task each row of its input belongs to.

A mixed batch carries one task index per image. Inside the network a module may see more rows than images
(Swin folds windows into the batch dimension, image-major), so indices are expanded to the rows each module sees.
A batch of one task is routed as that task alone: modules then use its slot directly, as a one-task model does,
instead of gathering a copy of its tensors for every row and scattering their gradients back (work and memory a
suite's per-task batches and a runtime's one-task batches do not need).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


class TaskRouter:
    """Holds the task index of each sample of the batch being computed; shared by all modules of one model."""

    def __init__(self, num_tasks: int) -> None:
        self.num_tasks = num_tasks
        self._task_ids: torch.Tensor | None = None
        self.task = 0  # the task of every sample while `rows` is None

    @contextmanager
    def route(self, task_ids: torch.Tensor | None, task: int = 0) -> Iterator[None]:
        """Route one forward pass: a task index per sample, or None when every sample belongs to `task`."""
        previous = self._task_ids, self.task
        self._task_ids, self.task = task_ids, task
        try:
            yield
        finally:
            self._task_ids, self.task = previous

    def rows(self, n_rows: int) -> torch.Tensor | None:
        """Task index of each of `n_rows` leading rows, or None when the whole batch is task `self.task`."""
        ids = self._task_ids
        if ids is None:
            return None
        n_images = ids.shape[0]
        if n_rows == n_images:
            return ids
        if n_rows % n_images:
            raise RuntimeError(f"cannot route {n_rows} rows for a batch of {n_images} images")
        return ids.repeat_interleave(n_rows // n_images)


def gather_per_row(values: torch.Tensor, rows: torch.Tensor | None, task: int) -> torch.Tensor:
    """values: (tasks, ...) -> task `task`'s (...) for a one-task batch, or (rows, ...) gathered per row."""
    return values[task] if rows is None else values.index_select(0, rows)


def broadcast_channels(per_channel: torch.Tensor, like: torch.Tensor, channel_dim: int, per_row: bool) -> torch.Tensor:
    """Reshape (C,) or (rows, C) so that it broadcasts over `like` along `channel_dim` (1 or -1)."""
    c = per_channel.shape[-1]
    if channel_dim == -1:
        if not per_row:
            return per_channel
        return per_channel.reshape(per_channel.shape[0], *([1] * (like.ndim - 2)), c)
    spatial = [1] * (like.ndim - 2)
    if not per_row:
        return per_channel.reshape(c, *spatial)
    return per_channel.reshape(per_channel.shape[0], c, *spatial)
