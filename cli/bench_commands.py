"""`adapterbank bench ...`: reproducible side-by-side measurements that print ratios."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from cli.output import console, markdown_table
from cli.ownership import owned_heap

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
    table.caption = f"{backbone}, ONNX Runtime {provider}, median of {rounds} interleaved rounds (x8/batch below 8)"
    console.print(table)


@app.command("accuracy")
def accuracy(
    data: Path = typer.Option(Path("../shared/data"), help="Folder of dataset folders."),
    bank: Path = typer.Option(Path("bench-bank"), "--bank", help="Bank the runs commit to."),
    tasks: str | None = typer.Option(None, help="Comma-separated task folder names (default: all)."),
    methods: str | None = typer.Option(None, help="Comma-separated (default: every method the backbone takes)."),
    recipe: str | None = typer.Option(
        None, help="Training recipe for every run (default: cpu/short; cpu/vit-short for the packaged ViT)."
    ),
    markdown: bool = typer.Option(False, "--markdown", help="Also print a Markdown table."),
    reuse: bool = typer.Option(False, "--reuse", help="Read back runs the bank holds with identical settings."),
    backbone: str = typer.Option("tf_efficientnet_lite0", help="timm name (ViT/Swin for prefix, prompt, utuning)."),
    checkpoint: str | None = typer.Option(
        "packaged", help="Backbone weights file; 'packaged' = the backbone's installed weights (backbones --packaged)."
    ),
) -> None:
    """Train every method on every task (real EfficientNet-Lite0 weights by default); accuracy, size, time per run."""
    from adapterbank.benchmarks.accuracy import accuracy_table
    from cli.train_commands import ProgressReporter

    reporters: list[ProgressReporter] = []

    def reporter(task: str, method: str) -> ProgressReporter:
        for old in reporters:
            old.stop()
        console.print(f"[bold]{task}[/bold] / {method}")
        reporters.append(ProgressReporter())
        return reporters[-1]

    chosen = [t for t in (tasks or "").split(",") if t] or None
    try:
        chosen_methods = [m for m in (methods or "").split(",") if m] or None
        rows = accuracy_table(data, bank, chosen, chosen_methods, recipe, reporter, reuse, backbone, checkpoint)
    finally:
        for old in reporters:
            old.stop()
    linear = {row.task: row.accuracy for row in rows if row.method == "linear"}
    table = Table("task", "method", "test accuracy", "n", "values / task", "bank bytes", "train time", "vs linear")
    markdown_rows = []
    for row in rows:
        delta = (
            ""
            if row.task not in linear or row.method == "linear"
            else f"{100 * (row.accuracy - linear[row.task]):+.1f} pt"
        )
        cells = [
            row.task,
            row.method,
            f"{100 * row.accuracy:.1f}%",
            str(row.n),
            f"{row.trainable:,}",
            f"{row.bank_bytes:,}",
            f"{row.seconds:.0f}s",
            delta,
        ]
        table.add_row(*cells)
        markdown_rows.append(cells[:3] + cells[4:])
    console.print(table)
    if markdown:
        header = ["task", "method", "test accuracy", "values / task", "bank bytes", "train time", "vs linear"]
        typer.echo(markdown_table(header, markdown_rows))


@app.command("suite")
def suite(
    data: Path = typer.Option(Path("../shared/data"), help="Folder of dataset folders."),
    methods: str = typer.Option("ssf,lora", help="Comma-separated; one suite per method."),
    tasks: str | None = typer.Option(None, help="Comma-separated task folder names (default: all)."),
    recipe: str | None = typer.Option(None, help="Training recipe of every run (default: the backbone's CPU one)."),
    backbone: str = typer.Option("tf_efficientnet_lite0", help="timm name."),
    checkpoint: str = typer.Option("packaged", help="Backbone weights file, or 'packaged'."),
    sampling: str = typer.Option("round-robin", help="round-robin or proportional."),
    workdir: Path = typer.Option(
        Path("bench-suite"), help="Where the banks and suite files go (this command's earlier ones are replaced)."
    ),
    markdown: bool = typer.Option(False, "--markdown", help="Also print Markdown tables."),
) -> None:
    """One `train --suite` process against separate `train` processes: wall time and per-task accuracy."""
    import shutil

    from adapterbank.benchmarks.suite import suite_benchmark
    from adapterbank.training.suite_file import SAMPLINGS

    if sampling not in SAMPLINGS:
        raise typer.BadParameter(f"choose one of {', '.join(SAMPLINGS)}", param_hint="--sampling")
    names = [m for m in methods.split(",") if m]
    for method in names:  # only what an earlier run of this command made there
        for made in (workdir / f"separate-{method}", workdir / f"suite-{method}"):
            shutil.rmtree(made, ignore_errors=True)
    workdir.mkdir(parents=True, exist_ok=True)
    chosen = [t for t in (tasks or "").split(",") if t] or None
    with console.status("training: separate runs, then the suite, per method"):
        rows, timings = suite_benchmark(data, workdir, names, chosen, recipe, backbone, checkpoint, sampling)
    accuracy = Table("method", "task", "separate", "suite", "suite - separate")
    accuracy_rows = []
    for row in rows:
        cells = [
            row.method,
            row.task,
            f"{100 * row.separate_accuracy:.1f}%",
            f"{100 * row.suite_accuracy:.1f}%",
            f"{100 * (row.suite_accuracy - row.separate_accuracy):+.1f} pt",
        ]
        accuracy.add_row(*cells)
        accuracy_rows.append(cells)
    timing = Table("method", "separate runs", "one suite", "suite / separate")
    timing_rows = []
    for t in timings:
        cells = [t.method, f"{t.separate_seconds:.0f} s", f"{t.suite_seconds:.0f} s",
                 f"{t.suite_seconds / t.separate_seconds:.2f}x"]  # fmt: skip
        timing.add_row(*cells)
        timing_rows.append(cells)
    console.print(accuracy)
    console.print(timing)
    if markdown:
        accuracy_md = markdown_table(["method", "task", "separate", "suite", "suite - separate"], accuracy_rows)
        timing_md = markdown_table(["method", "separate runs", "one suite", "suite / separate"], timing_rows)
        typer.echo(f"{accuracy_md}\n\n{timing_md}")


@app.command("train-memory")
def train_memory(
    backbone: str = typer.Option("vit_base_patch16_224"),
    batch: int = typer.Option(32, min=1),
    steps: int = typer.Option(2, min=1, help="Timed steps per method (after one untimed)."),
    rank: int = typer.Option(8, help="Rank of LoRA and SNELL."),
    methods: str = typer.Option("full,linear,lora,ssf,snell"),
    option: list[str] = typer.Option(
        [], "--option", "-o", help="KEY=VALUE for every method that has it, e.g. -o dropout=0 -o drop_path=0."
    ),
    image_size: int | None = typer.Option(None, "--image-size", min=16, help="Default: the backbone's own."),
) -> None:
    """Peak training memory and step time per method (fresh process each), as ratios to LoRA."""
    from adapterbank.benchmarks.train_memory import train_memory as measure
    from cli.options import parse_options

    chosen = [m for m in methods.split(",") if m]
    rows = measure(backbone, batch, steps, rank, chosen, parse_options(option), image_size or 0)
    lora = next((r for r in rows if r.method == "lora"), rows[0])
    table = Table(
        "method", "trainable", "peak MiB", "x LoRA memory", "saved activations MiB", "x LoRA", "step s", "x LoRA time"
    )
    for row in rows:
        table.add_row(
            row.method,
            f"{row.trainable:,}",
            f"{row.peak_mib:,.0f}",
            f"{row.peak_mib / lora.peak_mib:.3f}",
            f"{row.saved_mib:,.0f}",
            f"{row.saved_mib / lora.saved_mib:.3f}" if lora.saved_mib else "-",
            f"{row.step_seconds:.2f}",
            f"{row.step_seconds / lora.step_seconds:.3f}",
        )
    kind = "peak RSS" if rows[0].device == "cpu" else "torch.cuda.max_memory_allocated"
    table.caption = f"{backbone}, batch {batch}, rank {rank}, {rows[0].device} ({kind}), median of {steps} steps"
    console.print(table)


@app.command("layout")
def layout(
    backbone: str = typer.Option("tf_efficientnet_lite0", help="timm name of a CNN."),
    methods: str = typer.Option("linear,full,bitfit,ssf,lora,snell,adapter"),
    batch: int = typer.Option(32, min=1),
    image_size: int = typer.Option(112, "--image-size", min=16),
    rounds: int = typer.Option(8, min=1, help="Timed rounds per layout (interleaved, after two untimed)."),
    markdown: bool = typer.Option(False, "--markdown", help="Also print a Markdown table."),
) -> None:
    """Images stored channels first against channels last (what a CNN trains and serves on): step times."""
    from adapterbank.benchmarks.memory_layout import memory_layout

    rows = memory_layout(backbone, [m for m in methods.split(",") if m], batch, image_size, rounds)
    header = ["method", "train step NCHW s", "train step NHWC s", "train speed-up", "forward NCHW s",
              "forward NHWC s", "forward speed-up", "max logit diff"]  # fmt: skip
    cells = [
        [r.method, f"{r.train_first_s:.3f}", f"{r.train_last_s:.3f}", f"{r.train_first_s / r.train_last_s:.2f}x",
         f"{r.eval_first_s:.3f}", f"{r.eval_last_s:.3f}", f"{r.eval_first_s / r.eval_last_s:.2f}x",
         f"{r.max_logit_diff:.1e}"]
        for r in rows
    ]  # fmt: skip
    table = Table(*header)
    for row in cells:
        table.add_row(*row)
    table.caption = f"{backbone}, batch {batch}, {image_size} px, median of {rounds} interleaved rounds"
    console.print(table)
    if markdown:
        typer.echo(markdown_table(header, cells))


@app.command("http")
def http(
    backbone: str = typer.Option("tf_efficientnet_lite0", help="timm name; 'packaged' weights when it has them."),
    checkpoint: str | None = typer.Option("packaged", help="Backbone weights: a file, 'packaged' or 'none'."),
    method: str = typer.Option("ssf"),
    tasks: int = typer.Option(8, min=1, help="Tasks; client i asks for task i mod TASKS."),
    clients: str = typer.Option("1,4,8,16", help="Comma-separated counts of concurrent clients."),
    seconds: float = typer.Option(10.0, min=1.0, help="Measured seconds per point (after a warm-up)."),
    image_size: int = typer.Option(224, "--image-size", min=16),
    max_batch: int = typer.Option(64, "--max-batch", min=1),
    batch_wait_ms: float = typer.Option(5.0, "--batch-wait-ms", min=0.0),
    backend: str = typer.Option("torch"),
    replica_cpus: float = typer.Option(2.0, min=0.1, help="CPUs of the one replica (its compute threads)."),
    markdown: bool = typer.Option(False, "--markdown", help="Also print Markdown tables."),
) -> None:
    """HTTP throughput and latency, cross-task batching against one task at a time, N concurrent clients."""
    from adapterbank.benchmarks.http import MODES, http_benchmark
    from adapterbank.service.cluster import require_ray

    require_ray()
    counts = [int(c) for c in clients.split(",") if c.strip()]
    rows = http_benchmark(
        backbone, checkpoint, method, tasks, counts, seconds, image_size,
        max_batch, batch_wait_ms, backend, replica_cpus,
    )  # fmt: skip
    cross, alone = ({r.clients: r for r in rows if r.mode == mode} for mode in MODES)
    table = Table("clients", "cross-task img/s", "one-at-a-time img/s", "ratio", "cross p50/p99 ms", "one p50/p99 ms")
    markdown_rows = []
    for count in counts:
        a, b = cross[count], alone[count]
        ratio = f"{a.images_per_s / b.images_per_s:.2f}x"
        table.add_row(
            str(count), f"{a.images_per_s:.1f}", f"{b.images_per_s:.1f}", ratio,
            f"{a.p50_ms:.0f} / {a.p99_ms:.0f}", f"{b.p50_ms:.0f} / {b.p99_ms:.0f}",
        )  # fmt: skip
        cells = [count, f"{a.images_per_s:.1f}", f"{b.images_per_s:.1f}", ratio]
        cells += [f"{a.p50_ms:.0f}", f"{a.p99_ms:.0f}", f"{b.p50_ms:.0f}", f"{b.p99_ms:.0f}"]
        markdown_rows.append(cells)
    table.caption = (
        f"{backbone} at {image_size} px, {method}, {tasks} tasks, {backend}, max batch {max_batch}, "
        f"wait {batch_wait_ms:g} ms, {seconds:g} s per point"
    )
    console.print(table)
    if markdown:
        header = ["clients", "cross-task img/s", "one task at a time img/s", "ratio", "cross-task p50 ms",
                  "cross-task p99 ms", "one at a time p50 ms", "one at a time p99 ms"]  # fmt: skip
        typer.echo(markdown_table(header, markdown_rows))


@app.command("serve")
def serve(
    ctx: typer.Context,
    backbone: str = typer.Option("vit_base_patch16_224"),
    methods: str = typer.Option("ssf,bitfit,lora,snell,adapter", help="Add utuning, prefix, prompt on ViT/Swin."),
    tasks: int = typer.Option(8, min=2, help="Tasks the mixed batch is spread over."),
    batch: int = typer.Option(64, min=2),
    rounds: int = typer.Option(3, min=1),
    resident: int = typer.Option(100, min=0, help="Tasks held for the memory measurement (0: skip)."),
    snell_cache_mb: int = typer.Option(4096, min=0, help="Budget of SNELL's merged-weight cache."),
    image_size: int | None = typer.Option(None, "--image-size", min=16, help="Default: the backbone's own."),
) -> None:
    """Mixed-task batch throughput against single-task merged weights, the naive loop, and PEFT; memory."""
    from adapterbank.benchmarks.serve import serve_benchmark

    names = [m for m in methods.split(",") if m]
    with owned_heap(ctx) as kept:
        rows, memory = serve_benchmark(
            backbone, names, tasks, batch, rounds, resident, snell_cache_bytes=snell_cache_mb << 20, size=image_size
        )
    heap = "freed memory kept in the heap" if kept else "default allocator"
    table = Table(
        "method",
        "single-task merged img/s",
        "mixed img/s",
        "mixed / single",
        "naive loop img/s",
        "PEFT adapter_names img/s",
        "merged-weight cache MiB",
    )
    for row in rows:
        peft = "" if row.peft_ips is None else f"{row.peft_ips:.1f}"
        table.add_row(
            row.method,
            f"{row.single_ips:.1f}",
            f"{row.mixed_ips:.1f}",
            f"{row.mixed_vs_single:.2f}x",
            f"{row.naive_ips:.1f}",
            peft,
            f"{row.cache_bytes / 2**20:.0f}" if row.cache_bytes else "",
        )
    table.caption = f"{backbone}, batch {batch} over {tasks} tasks, median of {rounds} interleaved rounds, {heap}"
    console.print(table)
    if memory:
        mem = Table("method", "resident tasks", "backbone MiB", "task tensors MiB", "held MiB", "extra / task tensors")
        for m in memory:
            mem.add_row(
                m.method,
                str(m.tasks),
                f"{m.backbone_bytes / 2**20:.1f}",
                f"{m.task_bytes / 2**20:.1f}",
                f"{m.resident_bytes / 2**20:.1f}",
                f"{m.ratio:.2f}x",
            )
        console.print(mem)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="bench")


@app.command("scale")
def scale(
    ctx: typer.Context,
    tasks: str = typer.Option("100,1000,10000", help="Bank sizes (tasks stored), filled in steps."),
    backbone: str = typer.Option("tf_efficientnet_lite0"),
    methods: str = typer.Option("ssf,lora,snell"),
    snell_largest: int = typer.Option(1000, help="SNELL is measured up to this size (its files are the largest)."),
    batch: int = typer.Option(64, min=8, help="Images per batch (at least the 8 hot tasks)."),
    folder: Path | None = typer.Option(None, help="Where the banks are built (default: the system's temp folder)."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Cost against tasks stored: commit, bank ls, runtime start, cold request, mixed throughput, reload, memory."""
    import dataclasses

    from adapterbank.benchmarks.scale import RESIDENT, scale_benchmark
    from adapterbank.methods import get_method

    names = [m.strip() for m in methods.split(",") if m.strip()]
    for name in names:
        get_method(name)
    with owned_heap(ctx):  # as predict serves
        rows = scale_benchmark(backbone, names, _ints(tasks), batch, largest={"snell": snell_largest}, folder=folder)
    if as_json:
        typer.echo(json.dumps([dataclasses.asdict(row) for row in rows], indent=2))
        return
    table = Table(
        "method", "tasks", "commit ms", "bank ls s", "start s", "cold +ms", "mixed img/s", "vs single",
        "reload ms", "stacks / tensors", "opened MiB", f"+{RESIDENT} tasks MiB", "live MiB", "their tensors MiB",
        "live / tensors",
    )  # fmt: skip
    for r in rows:
        m = r.memory
        table.add_row(
            r.method, f"{r.tasks:,}", f"{r.commit_ms:.1f}", f"{r.ls_s:.2f}", f"{r.start_s:.2f}", f"{r.cold_ms:.0f}",
            f"{r.mixed_ips:.1f}", f"{r.mixed_ips / r.single_ips:.2f}x", f"{r.reload_ms:.2f}", f"{r.stack_ratio:.3f}",
            f"{m.opened_mib:.0f}", f"{m.added_mib:.0f}", f"{m.live_mib:.0f}", f"{m.tensors_mib:.0f}", f"{m.ratio:.2f}x",
        )  # fmt: skip
    table.caption = f"{backbone}, batch {batch}, 8 hot tasks; cold: one never-served task in a batch of the 8"
    console.print(table)


@app.command("onnx-memory")
def onnx_memory(
    backbone: str = typer.Option("vit_base_patch16_224"),
    methods: str = typer.Option("ssf,lora,snell,utuning"),
    tasks: int = typer.Option(8, min=1, help="Tasks served."),
) -> None:
    """ONNX Runtime memory for N tasks: isolated per-task sessions against ONNXRuntime's shared graphs."""
    from adapterbank.benchmarks.onnx_memory import onnx_memory as measure

    rows = measure(backbone, [m for m in methods.split(",") if m], tasks)
    table = Table("method", "tasks", "isolated sessions MiB", "ONNXRuntime MiB", "ratio", "+ shared initializers MiB")
    for row in rows:
        ratio = f"{row.runtime_mib / row.isolated_mib:.2f}x"
        cells = [f"{v:,.0f}" for v in (row.isolated_mib, row.runtime_mib)]
        table.add_row(row.method, str(row.tasks), *cells, ratio, f"{row.shared_mib:,.0f}")
    table.caption = f"{backbone}; resident growth while the sessions are created, fresh process each"
    console.print(table)
