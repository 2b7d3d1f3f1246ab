"""`adapterbank export`: banked tasks as ONNX graphs, checked in ONNX Runtime."""

from __future__ import annotations

from pathlib import Path

import typer

from adapterbank.bank.store import Bank
from adapterbank.errors import AdapterBankError
from cli.output import console


def export(
    task: str | None = typer.Option(None, "--task", help="Task to export as its own graph."),
    onnx: bool = typer.Option(True, "--onnx/--no-onnx", help="Export to ONNX (the only format)."),
    bank: Path = typer.Option(Path("bank"), "--bank", help="Bank folder."),
    out: Path = typer.Option(Path("exports"), "--out", help="Output folder."),
    fp16: bool = typer.Option(False, "--fp16", help="Store the graph in float16 (inputs and outputs stay float32)."),
    opset: int = typer.Option(18, "--opset", help="ONNX opset, 17 or newer."),
    batch: int = typer.Option(2, "--batch", min=1, help="Size of the parity-check batch."),
    multi_task: str | None = typer.Option(
        None, "--multi-task", help="T1,T2,... or 'all': one graph with a per-sample task_id input."
    ),
    name: str = typer.Option("multi_task", "--name", help="File name of the multi-task graph."),
) -> None:
    """Export tasks as re-parameterized ONNX graphs with a parity check and a manifest."""
    from adapterbank.export import export_multi_task, export_task

    if not onnx:
        raise AdapterBankError("ONNX is the only export format: pass --onnx")
    if (task is None) == (multi_task is None):
        raise AdapterBankError("pass either --task NAME or --multi-task T1,T2,...|all")
    store = Bank(bank)
    if multi_task is not None:
        tasks = store.tasks() if multi_task == "all" else [t.strip() for t in multi_task.split(",") if t.strip()]
        result = export_multi_task(store, tasks, name, out, fp16=fp16, opset=opset, batch=max(batch, len(tasks)))
    else:
        result = export_task(store, task, out, fp16=fp16, opset=opset, batch=batch)
    kind = "merged, zero overhead" if result.info["merged"] else f"extra ops: {', '.join(result.info['extra_ops'])}"
    console.print(f"wrote {result.graph} ({kind}); parity max |logit diff| {result.parity_error:.2e}")
    console.print(f"manifest {result.manifest}")


def register(app: typer.Typer) -> None:
    app.command()(export)
