"""Files that appear whole or not at all: the one way adapterbank writes anything a reader may open meanwhile.

A file is written under a temporary name in its own folder, flushed to disk, renamed over its target and the
folder flushed: a reader sees the old file or the new one, and a crash (even a power loss) leaves one of them
plus, at worst, a temporary file whose name starts with TEMP_PREFIX (the bank's writer lock sweeps its own).
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

TEMP_PREFIX = ".tmp-"


def fsync(path: Path) -> None:
    """Flush a file's data, or a folder's entries, to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temporary_path(target: Path) -> Path:
    """A name beside `target` that no other process or thread picks, marked as a temporary."""
    return target.parent / f"{TEMP_PREFIX}{target.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def publish(tmp: Path, target: Path) -> None:
    """Flush `tmp`, rename it over `target`, flush the folder."""
    fsync(tmp)
    os.replace(tmp, target)
    fsync(target.parent)


@contextlib.contextmanager
def temporaries(*targets: Path) -> Iterator[list[Path]]:
    """Temporary paths for `targets`; whatever is left of them (not published) is removed on the way out."""
    paths = [temporary_path(target) for target in targets]
    try:
        yield paths
    finally:
        for path in paths:
            path.unlink(missing_ok=True)


def write_whole(target: Path, write: Callable[[Path], object]) -> None:
    """`write(tmp)` then publish it as `target`; on any failure the target is untouched and tmp removed."""
    with temporaries(target) as (tmp,):
        write(tmp)
        publish(tmp, target)
