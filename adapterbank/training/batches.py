"""Deterministic batches: the order of an epoch depends only on (seed, epoch), so a resumed run sees the same
batches an uninterrupted one would, and ranks split each batch list without overlap."""

from __future__ import annotations

import torch


def epoch_batches(
    n: int, batch_size: int, epoch: int, seed: int, rank: int = 0, world_size: int = 1
) -> list[list[int]]:
    """This rank's batches of one epoch: a seeded permutation, cut into global batches, each split across ranks."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch)).tolist()
    global_batch = batch_size * world_size
    batches = []
    for start in range(0, n, global_batch):
        chunk = order[start : start + global_batch]
        if len(chunk) < world_size:  # every rank takes a step: the last chunk borrows from the epoch's start
            chunk = chunk + order[: world_size - len(chunk)]
        mine = chunk[rank::world_size]
        if mine:
            batches.append(mine)
    return batches


def steps_per_epoch(n: int, batch_size: int, world_size: int) -> int:
    return -(-n // (batch_size * world_size))
