"""An LRU cache of SNELL's merged weights W0 + dW for inference, under a byte budget shared by a runtime.

Training recomputes the sparse delta every forward (that is the method); serving the same task again need not.
Entries are keyed by the tensors' version counters, so any in-place update (an optimizer step, a load) invalidates
them. A budget below one entry's size disables caching (every call recomputes, still exact).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable

import torch


class WeightCache:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[Hashable, torch.Tensor] = OrderedDict()

    def get(self, key: Hashable, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        if key in self._entries:
            self._entries.move_to_end(key)
            self.hits += 1
            return self._entries[key]
        self.misses += 1
        value = compute()
        size = value.numel() * value.element_size()
        if size <= self.max_bytes:
            self._entries[key] = value
            self.bytes += size
            while self.bytes > self.max_bytes:
                _, evicted = self._entries.popitem(last=False)
                self.bytes -= evicted.numel() * evicted.element_size()
        return value
