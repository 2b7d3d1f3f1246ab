"""`adapterbank bank ...`: list, show, remove, verify tasks; LoRA interop with PEFT folders."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from adapterbank.bank.store import Bank, TaskSummary
from adapterbank.errors import AdapterBankError
from cli.output import console, human_count

app = typer.Typer(help="Inspect and manage a bank of tasks.", no_args_is_help=True, rich_markup_mode=None)

BankOption = typer.Option(Path("bank"), "--bank", help="Bank folder.")


def _row(summary: TaskSummary) -> dict:
    if summary.error:
        return {"task": summary.name, "method": "BAD", "error": summary.error}
    metric_name, metric = next(iter(summary.metrics.items()), ("", None))
    return {
        "task": summary.name,
        "method": summary.method,
        "params": summary.num_values,
        "bytes": summary.bytes,
        "classes": summary.num_classes,
        "metric": metric_name,
        "value": metric,
        "updated": summary.updated,
        "generation": summary.generation,
    }


@app.command("ls")
def list_tasks(bank: Path = BankOption, as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """List the tasks of a bank."""
    store = Bank(bank)
    rows = [_row(summary) for summary in store.summaries()]
    rows += [{"task": f"tasks/{entry}", "method": "BAD", "error": why} for entry, why in store.foreign_entries()]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table("task", "method", "params", "bytes", "metric", "updated")
    for row in rows:
        if "error" in row:  # listed, not fatal: the healthy tasks are still shown and served
            table.add_row(row["task"], "[red]BAD[/red]", "", "", row["error"][:80], "")
            continue
        value = row["value"]
        metric = f"{row['metric']} {value:.4g}" if isinstance(value, (int, float)) else ""
        table.add_row(
            row["task"], row["method"], human_count(row["params"]), human_count(row["bytes"]), metric, row["updated"]
        )
    identity = store.identity
    table.caption = f"{len(rows)} tasks on {identity.arch} ({identity.checkpoint}, {identity.fingerprint[:12]})"
    console.print(table)


@app.command()
def show(task: str, bank: Path = BankOption, as_json: bool = typer.Option(False, "--json")) -> None:
    """Show one task's method, config, classes, metrics and tensors."""
    record = Bank(bank).describe(task)
    info = {
        "task": record.name,
        "method": record.method,
        "config": record.config,
        "classes": record.class_names,
        "metrics": record.metrics,
        "training": record.training,
        "created": record.created,
        "updated": record.updated,
        "fingerprint": record.fingerprint,
        "params": record.num_values,
        "tensors": {k: list(s) for k, s in record.shapes.items()},
    }
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    for key in ("task", "method", "config", "metrics", "training", "created", "updated", "fingerprint"):
        console.print(f"[bold]{key}[/bold]: {info[key]}")
    names = record.class_names
    console.print(f"[bold]classes[/bold] ({len(names)}): {', '.join(names[:10])}{' ...' if len(names) > 10 else ''}")
    console.print(f"[bold]tensors[/bold]: {len(record.shapes)}, {record.num_values:,} values")


@app.command("rm")
def remove(task: str, bank: Path = BankOption) -> None:
    """Remove a task (atomically; other tasks are untouched)."""
    Bank(bank).remove(task)
    console.print(f"removed task '{task}'")


@app.command()
def verify(
    bank: Path = BankOption,
    repair: bool = typer.Option(False, "--repair", help="Rebuild a lost bank.h5 from the backbone file first."),
    arch: str | None = typer.Option(None, "--arch", help="With --repair: the timm architecture of the backbone."),
) -> None:
    """Check every file of a bank: backbone, tasks (checksums, values, shapes), stray entries, cached graphs."""
    from adapterbank.bank.checkup import repair_identity
    from adapterbank.bank.checkup import verify as check
    from adapterbank.bank.paths import regular_file
    from adapterbank.bank.store import orphaned

    if repair and not regular_file(bank / "bank.h5") and orphaned(bank):
        found = repair_identity(bank, arch)
        console.print(f"rebuilt {bank / 'bank.h5'} for {arch} (fingerprint {found[:12]})")
    store = Bank(bank)
    result = check(store, repair=repair)
    for what, why in result.problems:
        typer.echo(f"bad: {what}: {why}" if not why.startswith(f"task '{what}'") else f"bad: {why}", err=True)
    for line in result.fixed:
        console.print(line)
    console.print(f"{len(result.ok)} tasks ok, {len(result.problems)} bad")
    if result.problems:
        raise typer.Exit(1)


@app.command("import-peft")
def import_peft(
    folder: Path,
    task: str = typer.Option(..., "--task", help="Name of the new task."),
    bank: Path = BankOption,
    classes: Path | None = typer.Option(None, help="Text file with one class name per line."),
) -> None:
    """Import a Hugging Face PEFT LoRA folder as a task."""
    from adapterbank.bank.peft_folders import import_peft as read_folder
    from adapterbank.bank.torch_bridge import commit

    store = Bank(bank)
    names = None
    if classes is not None:
        if not classes.is_file():
            raise AdapterBankError(f"class file '{classes}' does not exist")
        names = [line.strip() for line in classes.read_text().splitlines() if line.strip()]
    record = commit(store, read_folder(store, folder, task, names))
    console.print(f"imported '{folder}' as task '{task}' ({record.num_values:,} values)")


@app.command("export-peft")
def export_peft(task: str, folder: Path, bank: Path = BankOption) -> None:
    """Export a LoRA task as a Hugging Face PEFT folder."""
    from adapterbank.bank.peft_folders import export_peft as write_folder

    write_folder(Bank(bank), task, folder)
    console.print(f"wrote PEFT folder '{folder}' for task '{task}'")


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="bank")
