"""`adapterbank bench ...`: reproducible side-by-side measurements that print ratios."""

from __future__ import annotations

import json

import typer
from rich.table import Table

from cli.output import console

app = typer.Typer(help="Benchmarks measured side by side in one run.", no_args_is_help=True, rich_markup_mode=None)


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


@app.command("export")
def export_latency(
    backbone: str = typer.Option("vit_base_patch16_224", help="timm architecture."),
    methods: str = typer.Option("snell,ssf,lora,bitfit", help="Methods whose merged graphs are timed."),
    batches: str = typer.Option("1,32", help="Batch sizes."),
    rounds: int = typer.Option(10, min=1, help="Timed rounds per graph (interleaved)."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """ONNX Runtime latency of each method's merged graph as a ratio to the bare backbone graph."""
    from adapterbank.benchmarks.export_latency import export_latency as measure
    from adapterbank.methods import get_method

    names = [m.strip() for m in methods.split(",") if m.strip()]
    for name in names:
        get_method(name)
    rows, provider = measure(backbone, names, _ints(batches), rounds)
    if as_json:
        typer.echo(json.dumps([row.__dict__ for row in rows], indent=2))
        return
    table = Table("batch", "graph", "median ms", "ratio to bare", "same ops as bare")
    for row in rows:
        table.add_row(
            str(row.batch),
            row.graph,
            f"{row.median_ms:.2f}",
            f"{row.ratio:.3f}x",
            "yes" if row.same_ops_as_bare else "NO",
        )
    table.caption = f"{backbone}, ONNX Runtime {provider}, median of {rounds} interleaved rounds"
    console.print(table)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="bench")
