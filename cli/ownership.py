"""Whether this run of the CLI owns its process: started as `adapterbank ...` (main() reads sys.argv), not called
by a host program or a test through main(argv). Only an owner changes process-wide state for good: glibc's
allocator (adapterbank.process.kept_heap)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import typer


def root_object(owns_process: bool) -> dict[str, bool]:
    """What main() hands the app as click's context object."""
    return {"owns_process": owns_process}


def owns_process(ctx: typer.Context) -> bool:
    return bool((ctx.find_root().obj or {}).get("owns_process", False))


@contextlib.contextmanager
def owned_heap(ctx: typer.Context) -> Iterator[bool]:
    """Freed memory kept in the heap when this run owns its process (commands that run batch after batch of one
    shape: serving, training); the allocator as it is otherwise. Yields whether the heap is kept."""
    if not owns_process(ctx):
        yield False
        return
    from adapterbank.process import kept_heap

    with kept_heap() as kept:
        yield kept
