"""Where ONNXRuntime keeps the graphs it builds from a bank: in the user's cache, never inside the bank.

A bank folder is untrusted (it may come from anyone); a graph found there could answer anything while every task
file checks out. So graphs live under $ADAPTERBANK_CACHE (default $XDG_CACHE_HOME/adapterbank, else
~/.cache/adapterbank), in a folder per bank (its backbone fingerprint and real path). Each graph's manifest records
its sha256 and the tasks it was built from (name and `updated` time): a graph whose bytes do not match is rebuilt,
one whose tasks changed or left the bank is stale and pruned.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from adapterbank.bank.store import Bank
from adapterbank.export import sha256_file


def cache_root() -> Path:
    if os.environ.get("ADAPTERBANK_CACHE"):
        return Path(os.environ["ADAPTERBANK_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "adapterbank"


def bank_graph_folder(bank: Bank) -> Path:
    place = hashlib.sha256(str(bank.path.resolve()).encode()).hexdigest()[:16]
    return cache_root() / "onnx" / f"{bank.identity.fingerprint[:16]}-{place}"


def graph_problem(graph: Path, current: dict[str, str]) -> str | None:
    """Why a cached graph must not be served ('damaged' or 'stale'), or None. `current`: task name -> updated."""
    manifest = graph.with_suffix(".json")
    try:
        info = json.loads(manifest.read_text())
        built_from = info["built_from"]
        recorded = info["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return "damaged"
    if not isinstance(built_from, dict) or any(current.get(t) != u for t, u in built_from.items()):
        return "stale"
    if not graph.is_file() or sha256_file(graph) != recorded:
        return "damaged"
    return None


def prune(folder: Path, current: dict[str, str]) -> dict[str, list[str]]:
    """Remove every graph of `folder` that is damaged or stale; {problem: [graph names]}."""
    removed: dict[str, list[str]] = {}
    if not folder.is_dir():
        return removed
    for graph in sorted(folder.glob("*.onnx")):
        problem = graph_problem(graph, current)
        if problem is not None:
            graph.unlink(missing_ok=True)
            graph.with_suffix(".json").unlink(missing_ok=True)
            removed.setdefault(problem, []).append(graph.name)
    return removed
