"""`bank verify [--repair]`: every file of a bank checked, nothing trusted, and what can be rebuilt rebuilt.

Checked: the backbone file against the bank's fingerprint; each task file (readable, attribute types, declared
sizes, checksums, finite values, the shapes its config implies, its preprocessing); entries under tasks/ that are
no task files; the catalog against the task files; the graphs ONNXRuntime cached for this bank (damaged or stale
ones are removed: they are rebuilt on use). Repaired: a lost bank.h5, rebuilt from backbone.safetensors once its
fingerprint matches the tasks'; a catalog that disagrees with the task files, rewritten from them.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import timm
from safetensors import SafetensorError
from safetensors.torch import load_file

from adapterbank.anatomy import fingerprint
from adapterbank.backbones import check_backbone_name
from adapterbank.bank.paths import inside
from adapterbank.bank.store import Bank, orphaned, restore_identity, task_fingerprints
from adapterbank.bank.torch_bridge import identity_of, load_backbone
from adapterbank.errors import AdapterBankError
from adapterbank.graph_cache import bank_graph_folder, prune
from adapterbank.runtime.slots import load_healthy


@dataclass
class Checkup:
    ok: list[str] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)  # (what, why): a failed checkup
    fixed: list[str] = field(default_factory=list)  # what was repaired or removed


def verify(bank: Bank, repair: bool = False) -> Checkup:
    """Check everything; damaged or stale graphs in the user's cache are always dropped (they are derived data),
    files inside the bank are only removed with `repair`."""
    result = Checkup()
    try:
        load_backbone(bank)
    except AdapterBankError as exc:
        result.problems.append(("backbone.safetensors", str(exc)))
    result.problems.extend((f"tasks/{entry}", why) for entry, why in bank.foreign_entries())
    records, broken = load_healthy(bank, bank.tasks())
    result.problems.extend(broken.items())
    result.ok = [r.name for r in records]
    disagreements = bank.catalog_disagreements(records)
    if disagreements and repair:
        count = bank.rewrite_catalog()
        result.fixed.append(f"rewrote catalog.sqlite from the task files ({count} rows; it had: {disagreements[0]})")
    else:
        result.problems.extend(
            ("catalog.sqlite", f"{why}: `bank verify --repair` rewrites it") for why in disagreements
        )
    current = {r.name: r.updated for r in records}
    for problem, graphs in prune(bank_graph_folder(bank), current).items():
        result.fixed.append(f"removed {len(graphs)} {problem} cached graph(s): {', '.join(graphs)}")
    legacy = inside(bank.path, ".onnx")
    if legacy.is_dir():  # graphs were once cached inside banks; one found there is never served now
        if repair:
            shutil.rmtree(legacy)
            result.fixed.append(f"removed {legacy} (graphs are cached outside banks, never read from one)")
        else:
            result.fixed.append(f"ignored {legacy}: graphs are never read from a bank (--repair removes it)")
    return result


def repair_identity(path: Path, arch: str | None) -> str:
    """Rebuild a lost bank.h5 from backbone.safetensors: the weights, loaded into `arch`, must give the
    fingerprint the task files carry. Returns that fingerprint."""
    path = Path(path)
    if not orphaned(path):
        raise AdapterBankError(f"'{path}' has no backbone.safetensors or task files to rebuild a bank from")
    fingerprints = set(task_fingerprints(path).values())
    if arch is None:
        raise AdapterBankError(f"pass --arch NAME: the timm architecture of the backbone in '{path}'")
    check_backbone_name(arch)
    try:
        tensors = load_file(str(inside(path) / "backbone.safetensors"))
    except (OSError, SafetensorError, ValueError) as exc:
        raise AdapterBankError(f"cannot read '{path}/backbone.safetensors' ({exc}): nothing to rebuild from") from exc
    model = timm.create_model(arch)
    try:
        missing, unexpected = model.load_state_dict(tensors, strict=False)
    except RuntimeError as exc:
        raise AdapterBankError(f"backbone.safetensors does not fit {arch}: {str(exc).splitlines()[0]}") from exc
    found = fingerprint(model, arch)
    head = model.pretrained_cfg.get("classifier", "")
    missing = [k for k in missing if not (k == head or k.startswith(f"{head}."))]
    if missing or unexpected or (fingerprints and fingerprints != {found}):
        raise AdapterBankError(
            f"backbone.safetensors loaded into {arch} has fingerprint {found[:12]}, the tasks were trained on "
            f"{', '.join(sorted(f[:12] for f in fingerprints))}: pass the right --arch"
        )
    restore_identity(path, identity_of(model, arch, "repaired"))
    return found
