"""`adapterbank export`: banked tasks as ONNX graphs, checked in ONNX Runtime."""

from __future__ import annotations

from pathlib import Path

import typer

from adapterbank.bank.store import Bank
from adapterbank.errors import AdapterBankError
from cli.output import console


def export(
    task: str | None = typer.Option(None, "--task", help="Task to export as its own graph."),
    onnx: bool = typer.Option(False, "--onnx", help="ONNX is the only format: the flag is accepted, never needed."),
    bank: Path = typer.Option(Path("bank"), "--bank", help="Bank folder."),
    out: Path = typer.Option(Path("exports"), "--out", help="Output folder."),
    fp16: bool = typer.Option(False, "--fp16", help="Store the graph in float16 (inputs and outputs stay float32)."),
    opset: int = typer.Option(18, "--opset", help="ONNX opset, 18 or newer."),
    batch: int = typer.Option(2, "--batch", min=1, help="Size of the parity-check batch."),
    multi_task: str | None = typer.Option(
        None, "--multi-task", help="T1,T2,... or 'all': one graph with a per-sample task_id input."
    ),
    name: str = typer.Option("multi_task", "--name", help="File name of the multi-task graph."),
    verify_data: Path | None = typer.Option(
        None, "--verify-data", help="Dataset folder: run the graph on it from the manifest alone before publishing."
    ),
    split: str | None = typer.Option(None, "--split", help="Split of --verify-data (default: the task's eval split)."),
    workers: int = typer.Option(2, "--workers", min=0, help="Image decoding processes for --verify-data."),
) -> None:
    """Export tasks as re-parameterized ONNX graphs with a parity check and a manifest."""
    from adapterbank.export import VerifyData, export_multi_task, export_task

    if (task is None) == (multi_task is None):
        raise AdapterBankError("pass either --task NAME or --multi-task T1,T2,...|all")
    if verify_data is not None and task is None:
        raise AdapterBankError("--verify-data checks one task's graph: use it with --task")
    store = Bank(bank)
    if multi_task is not None:
        tasks = store.tasks() if multi_task == "all" else [t.strip() for t in multi_task.split(",") if t.strip()]
        result = export_multi_task(store, tasks, name, out, fp16=fp16, opset=opset, batch=max(batch, len(tasks)))
    else:
        verify = VerifyData(verify_data, split, workers=workers) if verify_data is not None else None
        result = export_task(store, task, out, fp16=fp16, opset=opset, batch=batch, verify=verify)
    kind = "merged, zero overhead" if result.info["merged"] else f"extra ops: {', '.join(result.info['extra_ops'])}"
    console.print(f"wrote {result.graph} ({kind}); parity max |logit diff| {result.parity_error:.2e}")
    if "verified" in result.info:
        v = result.info["verified"]
        console.print(
            f"verified on {v['n']} images of '{v['split']}': graph accuracy {v['accuracy']:.4f}, "
            f"PyTorch {v['eval_accuracy']:.4f}"
        )
    console.print(f"manifest {result.manifest}")


def register(app: typer.Typer) -> None:
    app.command()(export)
