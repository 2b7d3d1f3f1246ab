"""`adapterbank train` and `adapterbank eval`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from adapterbank.packaged_weights import PACKAGED_ARCH
from cli.options import parse_options
from cli.output import console
from cli.ownership import owned_heap


class ProgressReporter:
    """A rich progress bar with loss, batch accuracy, throughput and ETA; evaluations printed as they happen."""

    def __init__(self) -> None:
        self.progress = Progress(
            TextColumn("[bold]training"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TextColumn("loss {task.fields[loss]:.4f}"),
            TextColumn("acc {task.fields[acc]:.3f}"),
            TextColumn("{task.fields[ips]:.1f} img/s"),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self.bar = None

    def start(self, total_steps: int, done: int) -> None:
        self.progress.start()
        self.bar = self.progress.add_task("train", total=total_steps, completed=done, loss=0.0, acc=0.0, ips=0.0)

    def step(self, done: int, loss: float, accuracy: float, images_per_second: float) -> None:
        self.progress.update(self.bar, completed=done, loss=loss, acc=accuracy, ips=images_per_second)

    def evaluated(self, epoch: int, accuracy: float) -> None:
        self.progress.console.print(f"epoch {epoch}: eval accuracy {accuracy:.4f}")

    def stop(self) -> None:
        self.progress.stop()


class SuiteProgress(ProgressReporter):
    """A progress bar per group of tasks trained together; each task's evaluations and commit by name."""

    def group(self, names: list[str]) -> None:
        self.progress.console.print(f"[bold]training together:[/bold] {', '.join(names)}")

    def task_evaluated(self, name: str, epoch: int, accuracy: float) -> None:
        self.progress.console.print(f"{name} epoch {epoch}: eval accuracy {accuracy:.4f}")

    def committed(self, name: str, accuracy: float) -> None:
        self.progress.console.print(f"{name}: committed (accuracy {accuracy:.4f})")


def _relaunch(num_gpus: int | None, hostfile: Path | None) -> None:
    """Run this same command under the deepspeed launcher, one process per GPU (and host)."""
    args, skip = [], False
    for arg in sys.argv[1:]:
        if skip:
            skip = False
            continue
        if arg in ("--num-gpus", "--hostfile"):
            skip = True
            continue
        if arg.startswith(("--num-gpus=", "--hostfile=")):
            continue
        args.append(arg)
    launcher = [sys.executable, "-m", "deepspeed.launcher.runner"]
    if num_gpus is not None:
        launcher += ["--num_gpus", str(num_gpus)]
    if hostfile is not None:
        launcher += ["--hostfile", str(hostfile)]
    raise typer.Exit(subprocess.call([*launcher, "--module", "cli", *args]))


def train(
    ctx: typer.Context,
    task: str | None = typer.Option(None, "--task", help="Task name in the bank (required without --suite)."),
    method: str | None = typer.Option(None, "--method", help="See `adapterbank methods` (required without --suite)."),
    data: Path | None = typer.Option(
        None, "--data", help="Dataset folder: VTAB-1k lists, FGVC json, ImageFolder, CSV (required without --suite)."
    ),
    suite: Path | None = typer.Option(
        None,
        "--suite",
        help="YAML listing many tasks to train in one job (docs/training.md#suites); the other "
        "flags apply to every task.",
    ),
    backbone: str | None = typer.Option(None, help="timm name (default: the bank's, or ViT-B/16 IN-21k)."),
    checkpoint: str | None = typer.Option(
        None,
        help="Backbone weights file or Hugging Face folder, 'packaged' (`adapterbank backbones --packaged`) or 'none' "
        "(random init); default: timm's.",
    ),
    bank: Path | None = typer.Option(None, "--bank", help="Bank folder (default: bank)."),
    epochs: int | None = typer.Option(None),
    batch_size: int | None = typer.Option(None, "--batch-size"),
    lr: float | None = typer.Option(None),
    weight_decay: float | None = typer.Option(None, "--weight-decay"),
    warmup_epochs: float | None = typer.Option(None, "--warmup-epochs"),
    rank: int | None = typer.Option(None, help="Rank for snell/lora."),
    sparsity: float | None = typer.Option(None, help="SNELL sparsity in [0, 1)."),
    option: list[str] = typer.Option(
        [], "--option", "-o", help="Any method option as KEY=VALUE, e.g. -o prefix_length=4 (repeatable)."
    ),
    recipe: str | None = typer.Option(None, help="Recipe name (e.g. vtab/cifar) or YAML file."),
    image_size: int | None = typer.Option(None, "--image-size"),
    augment: str | None = typer.Option(None, help="'none' (VTAB), 'fgvc' (SNELL/VPT) or 'simple' (SSF)."),
    seed: int | None = typer.Option(None),
    max_steps: int | None = typer.Option(None, "--max-steps"),
    eval_every: int | None = typer.Option(None, "--eval-every", help="Epochs between evaluations."),
    checkpoint_every: int | None = typer.Option(None, "--checkpoint-every", help="Steps between resume points."),
    workers: int | None = typer.Option(None, "--workers", help="Data loading processes."),
    num_gpus: int | None = typer.Option(None, "--num-gpus", help="Launch on N GPUs with the deepspeed launcher."),
    hostfile: Path | None = typer.Option(None, "--hostfile", help="deepspeed hostfile for multi-node runs."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the last checkpoint of this task."),
) -> None:
    """Train a task (or a suite of tasks) with DeepSpeed and commit it to the bank."""
    from adapterbank.errors import AdapterBankError
    from adapterbank.methods import get_method
    from adapterbank.training.settings import resolve
    from adapterbank.training.trainer import train as run

    single = {"--task": task, "--method": method, "--data": data}
    if suite is not None and any(v is not None for v in single.values()):
        given = next(k for k, v in single.items() if v is not None)
        raise AdapterBankError(f"--suite lists its tasks: drop {given} (or drop --suite)")
    if suite is None and any(v is None for v in single.values()):
        missing = next(k for k, v in single.items() if v is None)
        raise AdapterBankError(f"{missing} is required (or --suite FILE for many tasks)")
    if method is not None:
        get_method(method)
    if (num_gpus or hostfile) and "LOCAL_RANK" not in os.environ:
        _relaunch(num_gpus, hostfile)
    flags = dict(
        backbone=backbone,
        checkpoint=checkpoint,
        bank=None if bank is None else str(bank),
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        warmup_epochs=warmup_epochs,
        recipe=recipe,
        image_size=image_size,
        augment=augment,
        seed=seed,
        max_steps=max_steps,
        eval_every=eval_every,
        checkpoint_every=checkpoint_every,
        num_workers=workers,
        resume=resume,
    )
    flag_options = {k: v for k, v in (("rank", rank), ("sparsity", sparsity)) if v is not None}
    options = {**parse_options(option), **flag_options}  # --rank/--sparsity win over -o
    main = os.environ.get("RANK", "0") == "0"
    # each step allocates the same activations: reusing freed memory instead of faulting it in again halves the
    # system time of a CPU run (docs/training.md#allocator)
    ctx.with_resource(owned_heap(ctx))
    if suite is not None:
        _train_suite(suite, flags, options, main)
        return
    settings = resolve({**flags, "task": task, "method": method, "data": str(data)}, options)
    reporter = ProgressReporter() if main else None
    try:
        result = run(settings, reporter)
    finally:
        if reporter is not None:
            reporter.stop()
    if main:
        _print_results([(result, settings.method)])


def _train_suite(path: Path, flags: dict, options: dict, main: bool) -> None:
    from adapterbank.training.suite import train_suite
    from adapterbank.training.suite_file import load_suite

    suite = load_suite(path, flags, options)
    reporter = SuiteProgress() if main else None
    try:
        results = train_suite(suite, reporter)
    finally:
        if reporter is not None:
            reporter.stop()
    if main:
        _print_results([(r, s.method) for r, s in zip(results, suite.tasks, strict=True)])


def _print_results(results: list) -> None:
    table = Table("task", "method", "split", "accuracy", "n", "steps", "time", "resumed from")
    for result, method in results:
        table.add_row(
            result.task,
            method,
            result.split,
            f"{result.accuracy:.4f}",
            str(result.n),
            str(result.steps),
            f"{result.seconds:.0f}s",
            str(result.resumed_from) if result.resumed_from else "-",
        )
    console.print(table)


def evaluate(
    task: str = typer.Option(..., "--task"),
    data: Path = typer.Option(..., "--data"),
    split: str | None = typer.Option(None, help="Split to evaluate (default: the task's evaluation split)."),
    bank: Path = typer.Option(Path("bank"), "--bank"),
    batch_size: int = typer.Option(64, "--batch-size", min=1),
    workers: int = typer.Option(2, "--workers", min=0),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Accuracy of a banked task on a dataset split."""
    from adapterbank.evaluation import evaluate_task

    report = evaluate_task(bank, task, data, split, batch_size, workers)
    if as_json:
        typer.echo(json.dumps(report))
        return
    console.print(f"{report['task']} on {report['split']}: accuracy {report['accuracy']:.4f} (n={report['n']})")


def quickstart(
    folder: Path = typer.Option(Path("quickstart"), "--dir", help="Where data and the bank go."),
    backbone: str = typer.Option(
        PACKAGED_ARCH, help="A backbone with packaged weights (`adapterbank backbones --packaged`)."
    ),
    epochs: int = typer.Option(3, min=1),
    image_size: int | None = typer.Option(
        None, "--image-size", min=28, help="Default: 96 px for the CNN, 112 px (8x8 patches) for the ViT."
    ),
    max_steps: int | None = typer.Option(
        None, "--max-steps", min=1, help="Stop each task after N steps (a smoke run)."
    ),
) -> None:
    """Offline demo: two real-image tasks, two methods, one bank, real pretrained weights from a pip package."""
    from adapterbank.bank.store import Bank
    from adapterbank.quickstart import TASKS, bank_folder, check_backbone, prepare, settings_for
    from adapterbank.training.trainer import train as run

    size = check_backbone(backbone, image_size)
    data = prepare(folder)
    bank = bank_folder(folder, backbone)
    results = []
    for spec in TASKS:
        console.print(f"[bold]{spec.task}[/bold] ({spec.source}) with {spec.method} on {backbone}")
        reporter = ProgressReporter()
        try:
            settings = settings_for(spec, data[spec.task], bank, epochs, size, backbone)
            settings.max_steps = max_steps
            results.append((spec, run(settings, reporter)))
        finally:
            reporter.stop()
    store = Bank(bank)
    table = Table("task", "method", "data", "test accuracy", "n", "trainable values", "bank bytes", "train time")
    for spec, result in results:
        record = store.load(spec.task, with_tensors=False)
        table.add_row(
            spec.task,
            spec.method,
            spec.source,
            f"{result.accuracy:.4f}",
            str(result.n),
            f"{record.num_values:,}",
            f"{store.task_file(spec.task).stat().st_size:,}",
            f"{result.seconds:.0f}s",
        )
    table.caption = f"bank {bank} on {store.identity.arch} at {size} px (pretrained weights from a pip package)"
    console.print(table)


def register(app: typer.Typer) -> None:
    app.command()(train)
    app.command("eval")(evaluate)
    app.command()(quickstart)
