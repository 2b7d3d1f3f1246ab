"""Commands about backbones and methods: list them, and check a backbone x method combination end to end."""

from __future__ import annotations

import typer
from rich.table import Table

from adapterbank.errors import AdapterBankError
from adapterbank.method_names import METHOD_NAMES
from adapterbank.packaged_weights import PACKAGED_ARCH
from cli.output import console, human_count


def methods() -> None:
    """List the tuning methods."""
    from adapterbank.methods import METHODS

    table = Table("method", "merges", "mixed-task batches", "what it tunes")
    for name, cls in METHODS.items():
        table.add_row(name, "yes" if cls.mergeable else "no", "yes" if cls.supports_mixed_tasks else "no", cls.summary)
    console.print(table)


def backbones(
    pattern: str = typer.Argument("*", help="Wildcard over timm names, e.g. 'vit_*'."),
    packaged: bool = typer.Option(False, "--packaged", help="Only backbones with weights from an installed package."),
) -> None:
    """List timm architectures usable as backbones (`--packaged`: those `--checkpoint packaged` loads offline)."""
    from adapterbank.backbones import list_backbones

    if packaged:
        _list_packaged()
        return
    names = list_backbones(pattern)
    if not names:
        raise AdapterBankError(f"no timm architecture matches '{pattern}'")
    console.print("\n".join(names))


def _list_packaged() -> None:
    from adapterbank.packaged_weights import PACKAGED, packaged_checkpoint

    table = Table("backbone", "weights", "package", "installed")
    for arch, weights in PACKAGED.items():
        try:
            packaged_checkpoint(arch)  # the file, checked by its sha256
            installed = "yes"
        except AdapterBankError as exc:
            installed = f"no: {exc}"
        table.add_row(arch, weights.what, weights.requirement, installed)
    console.print(table)


def inspect(
    backbone: str = typer.Option(PACKAGED_ARCH, help="timm architecture name."),
    checkpoint: str = typer.Option(
        "packaged",
        help="Weights file, 'packaged' (from a pip package; `adapterbank backbones --packaged`) or 'none'.",
    ),
    method: str = typer.Option("all", help="A method name, a comma-separated list, or 'all'."),
    num_classes: int = typer.Option(10, min=1, help="Classes of the example task."),
    rank: int | None = typer.Option(None, help="Rank for snell/lora."),
    sparsity: float | None = typer.Option(None, help="SNELL sparsity s in [0, 1)."),
    seed: int = typer.Option(0, help="Seed of the random task parameters and images."),
) -> None:
    """Attach methods to a backbone, perturb their parameters as training would, merge, and check the merge."""
    import torch

    from adapterbank.backbones import create_backbone
    from adapterbank.inspection import inspect_method
    from adapterbank.methods import METHODS, get_method
    from adapterbank.weight_specs import resolve_weights

    names = list(METHOD_NAMES) if method == "all" else [m.strip() for m in method.split(",")]
    for name in names:
        get_method(name)
    weights = resolve_weights(checkpoint, backbone)
    torch.manual_seed(seed)
    model = create_backbone(backbone, checkpoint=weights.path, pretrained=weights.pretrained)
    size = model.pretrained_cfg.get("input_size", (3, 224, 224))
    images = torch.randn(2, *size, generator=torch.Generator().manual_seed(seed))
    table = Table(
        "method", "trainable / task", "% of backbone", "head", "merged == bare timm model", "max |logit diff|"
    )
    for name in names:
        options = {
            k: v
            for k, v in (("rank", rank), ("sparsity", sparsity))
            if k in METHODS[name].config_type.__dataclass_fields__
        }
        try:
            report = inspect_method(model, backbone, name, options, num_classes, images)
        except AdapterBankError:
            if method != "all":
                raise
            table.add_row(name, "-", "-", "-", "not for this backbone", "-")
            continue
        same = "n/a" if report.merged_same_as_bare is None else ("yes" if report.merged_same_as_bare else "NO")
        diff = "n/a" if report.max_logit_diff is None else f"{report.max_logit_diff:.2e}"
        share = 100.0 * report.trainable / report.backbone_params
        table.add_row(name, human_count(report.trainable), f"{share:.3f}%", human_count(report.head), same, diff)
    table.caption = f"{backbone} ({weights.path or 'random init'}); task tensors randomly perturbed"
    console.print(table)


def register(app: typer.Typer) -> None:
    app.command()(methods)
    app.command()(backbones)
    app.command()(inspect)
