"""docs/benchmarks.md plots: a marked table becomes a PNG, an unmarked one does not, cells read as their numbers."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from PIL import Image

from adapterbank.benchmarks.plots import cell_number, find_tables, plot_markdown, series
from tests.helpers import REPO

MARKDOWN = """# Results

<!-- plot: speed columns=snell,ssf ylabel="ratio" hline=1.02 -->
| batch | bare | snell | ssf |
|---|---|---|---|
| 1 | 171.8 ms | **0.995x** | 0.991x |
| 32 | 4670 ms | 1.001x | (1.004x) |

A table nobody asked to draw:

| task | accuracy |
|---|---|
| cub | 89.6 |
"""


def test_marked_table_is_drawn_and_unmarked_is_not(tmp_path: Path) -> None:
    source = tmp_path / "bench.md"
    source.write_text(MARKDOWN)
    written = plot_markdown(source, tmp_path / "figures")
    assert written == [tmp_path / "figures" / "speed.png"]
    assert sorted(p.name for p in (tmp_path / "figures").iterdir()) == ["speed.png"]
    assert written[0].stat().st_size > 0
    with Image.open(written[0]) as image:
        assert image.format == "PNG" and image.width > 100 and image.height > 100
        image.verify()


def test_cells_and_continuation_rows() -> None:
    assert [cell_number(c) for c in ("4670 ms", "**0.99x**", "(1.15x)", "73.1 (-11.0)", "3,425,834", "96.1%")] == [
        4670.0,
        0.99,
        1.15,
        73.1,
        3425834.0,
        96.1,
    ]
    assert math.isnan(cell_number("")) and math.isnan(cell_number("lora"))
    text = "<!-- plot: mem labels=run,method -->\n| run | method | MiB |\n|---|---|---|\n| a | x | 1 |\n| | y | 2 |\n"
    [table] = find_tables(text)
    labels, columns, values = series(table)
    assert labels == ["a / x", "a / y"] and columns == ["MiB"] and values == [[1.0, 2.0]]


def test_stacked_markers_each_draw_the_table_below() -> None:
    markers = "<!-- plot: rate columns=img/s -->\n<!-- plot: tail columns=p99 -->\n"
    text = markers + "| n | img/s | p99 |\n|---|---|---|\n| 1 | 9 | 3 |\n"
    rate, tail = find_tables(text)
    assert (rate.name, series(rate)[2], tail.name, series(tail)[2]) == ("rate", [[9.0]], "tail", [[3.0]])
    assert find_tables(text.replace("-->\n<!--", "-->\nProse.\n<!--"))[0].name == "tail"  # prose breaks the stack


def test_marker_must_sit_right_above_its_table() -> None:
    text = "<!-- plot: lost -->\nSome prose.\n\n| a | b |\n|---|---|\n| x | 1 |\n"
    assert find_tables(text) == []
    with pytest.raises(ValueError, match="no column"):
        series(find_tables("<!-- plot: bad columns=nope -->\n| a | b |\n|---|---|\n| x | 1 |\n")[0])


def test_every_marked_table_of_the_benchmarks_page_has_a_figure() -> None:
    """The docs' markers still name real columns, and each plot is embedded beside its table."""
    page = REPO / "docs" / "benchmarks.md"
    tables = find_tables(page.read_text(encoding="utf-8"))
    assert len(tables) >= 4
    for table in tables:
        labels, columns, values = series(table)
        assert labels and columns and all(any(not math.isnan(v) for v in column) for column in values), table.name
        assert f"(figures/{table.name}.png)" in page.read_text(encoding="utf-8")
        assert (REPO / "docs" / "figures" / f"{table.name}.png").is_file()
