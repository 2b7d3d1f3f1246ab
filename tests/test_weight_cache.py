"""The merged-weight cache: LRU under a byte budget that keeps what fits of a batch cycling over more than fits."""

from __future__ import annotations

import torch

from adapterbank.methods.weight_cache import WeightCache

UNIT = torch.zeros(256)  # 1 KiB


def serve(cache: WeightCache, keys: list[str]) -> list[str]:
    """One batch touching `keys` in order; the keys that had to be computed."""
    computed: list[str] = []
    cache.next_batch()
    for key in keys:
        cache.get(key, lambda key=key: computed.append(key) or UNIT.clone())
    return computed


def test_a_batch_larger_than_the_budget_keeps_what_fits() -> None:
    cache = WeightCache(2 * UNIT.nbytes)
    cycle = ["a", "b", "c", "d"]
    assert serve(cache, cycle) == cycle
    for _ in range(3):  # plain LRU would evict each entry just before its next use and compute all four again
        assert serve(cache, cycle) == ["c", "d"]
    assert cache.bytes == 2 * UNIT.nbytes


def test_entries_of_absent_tasks_make_room_least_recent_first() -> None:
    cache = WeightCache(3 * UNIT.nbytes)
    serve(cache, ["a", "b", "c"])
    serve(cache, ["b"])
    assert serve(cache, ["x", "y"]) == ["x", "y"]  # evicts a, then c (b was used more recently)
    assert serve(cache, ["b", "x", "y"]) == []
    assert serve(cache, ["a"]) == ["a"]


def test_a_budget_below_one_entry_stores_nothing() -> None:
    cache = WeightCache(UNIT.nbytes - 1)
    assert serve(cache, ["a"]) == ["a"] and serve(cache, ["a"]) == ["a"]
    assert cache.bytes == 0 and cache.hits == 0
