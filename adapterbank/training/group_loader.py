"""One loader for a suite group's steps: each step's batch of every unfinished task, from one pool of workers.

A loader per task keeps a pool per task alive: five tasks of two workers each put ten processes beside the model's
threads, and on two cores the group's forward and evaluations ran 1.3-2x slower than a task's own run (measured,
docs/benchmarks.md#suite-training). One pool, of the workers one task's run has, loads them all. The plan follows
each task's own run exactly: its epochs' seeded orders (epoch_batches), from its position on, until its last
step; augmentation draws per (seed, epoch, image), so the images are those of its own run, with any worker count.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from adapterbank.data.images import ImageDataset, loader_batches
from adapterbank.training.batches import epoch_batches

Key = tuple[int, int, int]  # (slot, epoch, index in the task's training set)
TaskBatch = tuple[int, torch.Tensor, torch.Tensor]  # (slot, images, labels)


@dataclass
class Position:
    """Where a task's run stands, and what its steps are."""

    slot: int
    step: int
    epoch: int
    batch: int  # steps taken in the current epoch
    total: int
    per_epoch: int
    size: int
    batch_size: int
    seed: int


def step_plan(positions: Sequence[Position], rank: int, world_size: int) -> Iterator[list[Key]]:
    """Every step's samples: each unfinished task's next batch of its own run, in the order of `positions`."""
    positions = [Position(**vars(p)) for p in positions]  # the plan advances its own copies
    orders: dict[int, tuple[int, list[list[int]]]] = {}
    while active := [p for p in positions if p.step < p.total]:
        keys: list[Key] = []
        for p in active:
            if orders.get(p.slot, (None,))[0] != p.epoch:
                orders[p.slot] = (p.epoch, epoch_batches(p.size, p.batch_size, p.epoch, p.seed, rank, world_size))
            keys += [(p.slot, p.epoch, index) for index in orders[p.slot][1][p.batch]]
            p.step, p.batch = p.step + 1, p.batch + 1
            if p.step >= p.total or p.batch >= p.per_epoch:
                p.epoch, p.batch = p.epoch + 1, 0
        yield keys


class GroupSamples(torch.utils.data.Dataset):
    """A key (slot, epoch, index) -> (slot, image, label) from that task's training set."""

    def __init__(self, train_sets: Sequence[ImageDataset]) -> None:
        self.train_sets = list(train_sets)

    def __len__(self) -> int:
        return sum(len(s) for s in self.train_sets)

    def __getitem__(self, key: Key) -> tuple[int, torch.Tensor, int]:
        slot, epoch, index = key
        return (slot, *self.train_sets[slot].sample(index, epoch))


def per_task(samples: list[tuple[int, torch.Tensor, int]]) -> list[TaskBatch]:
    """A step's samples as one (slot, images, labels) batch per task, in plan order."""
    batches = []
    for slot, rows in itertools.groupby(samples, key=lambda sample: sample[0]):
        rows = list(rows)
        batches.append((slot, torch.stack([r[1] for r in rows]), torch.tensor([r[2] for r in rows])))
    return batches


def group_batches(
    train_sets: Sequence[ImageDataset], positions: Sequence[Position], workers: int, seed: int, rank: int,
    world_size: int,
) -> Iterator[list[TaskBatch]]:  # fmt: skip
    """The group's steps from `positions` on, loaded by `workers` processes (0: in this one)."""
    # its own generator: a loader draws a seed when iterated, which must not shift the global one
    loader = torch.utils.data.DataLoader(
        GroupSamples(train_sets),
        batch_sampler=step_plan(positions, rank, world_size),
        num_workers=workers,
        collate_fn=per_task,
        generator=torch.Generator().manual_seed(seed),
    )
    return loader_batches(loader)
