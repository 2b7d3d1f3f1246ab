"""Shared rich console and formatting helpers for commands."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from rich.console import Console

# Wide when piped, so tables in logs and CI output are not wrapped at 80 columns.
console = Console(soft_wrap=True, width=None if Console().is_terminal else 160)


def human_count(n: int) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A Markdown table: what a `bench ... --markdown` prints for docs/benchmarks.md."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(map(str, row)) + " |" for row in rows])
