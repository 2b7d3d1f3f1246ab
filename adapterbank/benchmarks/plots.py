"""Bar charts of the benchmark tables in docs/benchmarks.md: numbers people compare at a glance get a picture.

A Markdown table is drawn when the nearest non-blank line above it is an HTML comment naming the plot (several
such comments stacked above one table draw it once each):

    <!-- plot: accuracy columns=linear,full ylabel="test accuracy (%)" ylim=50,95 -->
    | task | linear | full |
    |---|---|---|
    | mnist5k | 84.1 | 73.1 (-11.0) |

and becomes FOLDER/accuracy.png: one group of bars per row, one bar per numeric column. Options (all optional):
`columns` (headers to draw; default every column with a number), `labels` (headers joined into the row label;
default the first column; a blank cell repeats the row above, as the tables write continuation rows), `xlabel`
(default: the label headers), `ylabel`, `title`, `ylim=LOW,HIGH`, `log=true`, `hline=VALUE` (a dashed reference
line, e.g. a target). A cell reads as its
leading number: "4670 ms", "0.995x", "**0.99x**", "(1.15x)", "73.1 (-11.0)", "3,425,834" and "96.1%" all work;
a cell without one leaves a gap. Tables without a marker are not drawn.

    python -m adapterbank.benchmarks.plots docs/benchmarks.md docs/figures

matplotlib is imported only when drawing (`pip install adapterbank[plots]`), so the library does not need it.
"""

from __future__ import annotations

import math
import re
import shlex
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

_MARKER = re.compile(r"^\s*<!--\s*plot:\s*(?P<body>.*?)\s*-->\s*$")
_NAME = re.compile(r"[A-Za-z0-9._-]+")
_NUMBER = re.compile(r"[-+]?\d[\d,]*(?:\.\d+)?|[-+]?\.\d+")
_DECORATION = "*_`([ "


@dataclass
class MarkedTable:
    """A table the document asked to be drawn: its plot name, options and cells (markdown stripped)."""

    name: str
    header: list[str]
    rows: list[list[str]]
    options: dict[str, str] = field(default_factory=dict)


def cell_number(cell: str) -> float:
    """The leading number of a cell, NaN when it has none (a label, an empty cell)."""
    match = _NUMBER.match(cell.strip().lstrip(_DECORATION))
    return float(match.group().replace(",", "")) if match else math.nan


def _cells(line: str) -> list[str]:
    inner = line.strip().removeprefix("|").removesuffix("|")
    return [cell.strip().replace("**", "").replace("`", "") for cell in inner.split("|")]


def _is_rule(cells: list[str]) -> bool:
    return bool(cells) and all(re.fullmatch(r":?-{3,}:?", c) for c in cells)


def _parse_marker(body: str, where: str) -> tuple[str, dict[str, str]]:
    words = shlex.split(body)
    if not words or not _NAME.fullmatch(words[0]):
        raise ValueError(f"{where}: a plot marker needs a file name first (letters, digits, '.', '_', '-')")
    options = {}
    for word in words[1:]:
        key, sep, value = word.partition("=")
        if not sep:
            raise ValueError(f"{where}: plot option '{word}' is not KEY=VALUE")
        options[key] = value
    return words[0], options


def find_tables(text: str) -> list[MarkedTable]:
    """Every table whose nearest non-blank line above is a plot marker, in document order; markers stacked right
    above one table each draw it (e.g. throughput and latency of the same rows)."""
    lines = text.splitlines()
    found = []
    pending: list[tuple[str, dict[str, str]]] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        marker = _MARKER.match(line)
        if marker:
            pending.append(_parse_marker(marker["body"], f"line {i + 1}"))
        elif line.lstrip().startswith("|"):
            block = []
            while i < len(lines) and lines[i].lstrip().startswith("|"):
                block.append(_cells(lines[i]))
                i += 1
            if len(block) >= 3 and _is_rule(block[1]):
                found += [MarkedTable(name, block[0], block[2:], options) for name, options in pending]
            pending = []
            continue
        elif line.strip():
            pending = []  # a marker belongs to the table right below it, not to one further down
        i += 1
    return found


def _column_indices(table: MarkedTable, option: str, default: list[int]) -> list[int]:
    if option not in table.options:
        return default
    wanted = [w.strip() for w in table.options[option].split(",") if w.strip()]
    missing = [w for w in wanted if w not in table.header]
    if missing:
        raise ValueError(f"plot '{table.name}': no column {missing[0]!r} (columns: {', '.join(table.header)})")
    return [table.header.index(w) for w in wanted]


def series(table: MarkedTable) -> tuple[list[str], list[str], list[list[float]]]:
    """(row labels, column names, values[column][row]) as drawn: blank label cells repeat the row above."""
    labels_at = _column_indices(table, "labels", [0])
    numeric = [
        j
        for j in range(len(table.header))
        if j not in labels_at and any(not math.isnan(cell_number(row[j])) for row in table.rows if j < len(row))
    ]
    columns = _column_indices(table, "columns", numeric)
    labels, previous = [], [""] * len(labels_at)
    for row in table.rows:
        parts = [row[j] if j < len(row) and row[j] else previous[k] for k, j in enumerate(labels_at)]
        previous = parts
        labels.append(" / ".join(p for p in parts if p))
    values = [[cell_number(row[j]) if j < len(row) else math.nan for row in table.rows] for j in columns]
    return labels, [table.header[j] for j in columns], values


def draw(table: MarkedTable, path: Path) -> Path:
    """One grouped bar chart as a PNG (no timestamp in its metadata, so unchanged tables give unchanged files)."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    labels, names, values = series(table)
    if not names or not labels:
        raise ValueError(f"plot '{table.name}': no numeric column to draw")
    groups, bars = len(labels), len(names)
    width = 0.8 / bars
    figure = Figure(figsize=(min(12.0, max(6.0, 0.3 * groups * bars + 2.5)), 4.5), dpi=110, layout="constrained")
    axes = figure.add_subplot()
    for k, (name, column) in enumerate(zip(names, values, strict=True)):
        offsets = [g - 0.4 + width * (k + 0.5) for g in range(groups)]
        axes.bar(offsets, column, width, label=name)
    chars = max(8, int(figure.get_figwidth() * 11 / groups))  # what fits under one group at font size 8
    names_below = ["\n".join(textwrap.fill(part, chars) for part in label.split(" / ")) for label in labels]
    axes.set_xticks(range(groups), names_below, fontsize=8)
    axes.set_title(table.options.get("title", table.name), fontsize=10)
    axes.set_ylabel(table.options.get("ylabel", ""))
    label_columns = _column_indices(table, "labels", [0])
    axes.set_xlabel(table.options.get("xlabel", " / ".join(table.header[j] for j in label_columns)), fontsize=9)
    if table.options.get("log", "").lower() in ("1", "true", "yes"):
        axes.set_yscale("log")
        axes.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        axes.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))  # 50, not 5 x 10^1
        axes.yaxis.set_minor_formatter(NullFormatter())
    if "ylim" in table.options:
        low, high = (float(v) for v in table.options["ylim"].split(","))
        axes.set_ylim(low, high)
    if "hline" in table.options:
        axes.axhline(float(table.options["hline"]), color="0.3", linestyle="--", linewidth=1)
    axes.grid(axis="y", alpha=0.3)
    axes.set_axisbelow(True)
    if bars > 1:  # above the plot, where it never hides a bar
        figure.legend(loc="outside upper center", fontsize=8, ncols=min(bars, 7), frameon=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", metadata={"Software": None})
    return path


def plot_markdown(markdown: Path, out_dir: Path) -> list[Path]:
    """Draw every marked table of `markdown` into `out_dir` as NAME.png; returns the files written."""
    tables = find_tables(Path(markdown).read_text(encoding="utf-8"))
    names = [t.name for t in tables]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"{markdown}: plot name '{repeated[0]}' is used twice")
    return [draw(table, Path(out_dir) / f"{table.name}.png") for table in tables]


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m adapterbank.benchmarks.plots MARKDOWN OUT_DIR", file=sys.stderr)
        return 2
    for path in plot_markdown(Path(args[0]), Path(args[1])):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
