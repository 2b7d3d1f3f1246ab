"""A cache of merged weights for inference, under a byte budget shared by a runtime: SNELL's W0 + dW per layer,
and whole merged models of tasks a batch holds many rows of (TorchRuntime).

Training recomputes the sparse delta every forward (that is the method); serving the same task again need not.
Entries are keyed by the tensors' version counters, so any in-place update (an optimizer step, a load) invalidates
them. A budget below one entry's size disables caching (every call recomputes, still exact).

Eviction is least-recently-used, except that an entry used in the current batch is never evicted: a batch walks
the layers in the same order every time, and when its tasks' weights exceed the budget plain LRU would evict each
entry just before it is needed again (no hits at all). Protecting the batch's own entries keeps the part that fits
and recomputes only the rest; entries of tasks absent from the current batch still make room as before.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

import torch
from torch import nn


def _nbytes(value: torch.Tensor | nn.Module) -> int:
    if isinstance(value, nn.Module):  # a merged model, counted whole (layers it shares included: an upper bound)
        return sum(t.numel() * t.element_size() for t in value.state_dict().values())
    return value.numel() * value.element_size()


class WeightCache:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self.batch = 0
        self._entries: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()  # value, batch last used

    def next_batch(self) -> None:
        """Entries used before this call may be evicted again."""
        self.batch += 1

    def get(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        """The cached value of `key` (a tensor, or a merged model), computed and kept if it fits."""
        if key in self._entries:
            self._entries.move_to_end(key)
            value, _ = self._entries[key]
            self._entries[key] = (value, self.batch)
            self.hits += 1
            return value
        self.misses += 1
        value = compute()
        if self._make_room(_nbytes(value)):
            self._entries[key] = (value, self.batch)
            self.bytes += _nbytes(value)
        return value

    def _make_room(self, size: int) -> bool:
        """Evict least recently used entries of earlier batches until `size` fits; if it cannot fit, evict none."""
        free, victims = self.max_bytes - self.bytes, []
        for key, (value, used) in self._entries.items():  # oldest first; this batch's entries are all at the end
            if free >= size or used == self.batch:
                break
            victims.append(key)
            free += _nbytes(value)
        if free < size:
            return False
        for key in victims:
            self.bytes -= _nbytes(self._entries.pop(key)[0])
        return True
