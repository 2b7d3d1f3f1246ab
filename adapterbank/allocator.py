"""Keep freed memory in the process heap for repeated CPU inference.

glibc hands large freed blocks straight back to the OS (its mmap threshold and heap trimming), so every large
tensor of the next forward page-faults its memory in again. Measured on the 2-core VM: batch-64
EfficientNet-Lite0 inference ran 28 img/s by default and 81 img/s with freed memory kept (batches of 8, whose
tensors stay under the threshold, ran 51 and 87). The CLI's serving and throughput commands own their process and
turn this on (through `adapterbank.process.kept_heap`); a library never changes its host's allocator on its
own.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
LARGEST = 2**31 - 1  # mallopt takes an int


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds to their maximum; False where the C library is not glibc."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, LARGEST)) and bool(mallopt(M_TRIM_THRESHOLD, LARGEST))


def trim_freed_memory() -> bool:
    """Hand memory the heap holds free back to the OS (glibc malloc_trim): what a process then holds is what is
    live. For measurements; False where the C library is not glibc."""
    try:
        return bool(ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim(0))
    except (OSError, AttributeError, TypeError):
        return False
