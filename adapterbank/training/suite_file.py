"""Suite files: many tasks for one `adapterbank train --suite` job, each resolved to its TrainSettings.

    sampling: round-robin        # or proportional (adapterbank.training.suite)
    defaults:                    # optional: settings and method options for every task
      recipe: cpu/short
      epochs: 3
    tasks:
      - {task: cifar10-ssf, data: vtab-1k/cifar10, method: ssf}
      - {task: pets-lora, data: vtab-1k/pets, method: lora, rank: 4, lr: 0.002}

Each task is resolved as a single `train` would be: defaults < its recipe < the suite's `defaults` < its own entry
< the command line's flags. Relative `data` folders and recipe files are read from the suite file's folder. All
tasks share one bank and one backbone.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from adapterbank.bank.paths import regular_file
from adapterbank.errors import AdapterBankError
from adapterbank.training.settings import FIELDS, TrainSettings, resolve

SAMPLINGS = ("round-robin", "proportional")
MAX_SUITE_BYTES = 1 << 20
MAX_SUITE_TASKS = 1000  # a VTAB-1k run is 19; a group of thousands would stack thousands of heads in one model
SHARED = ("bank", "backbone", "checkpoint")  # one bank and one backbone per suite


@dataclass
class Suite:
    sampling: str
    tasks: list[TrainSettings]


def load_suite(path: str | Path, flags: dict[str, Any], options: dict[str, Any]) -> Suite:
    """The suite at `path` with the command line's `flags` (None: not given) and method `options` over every task."""
    path = Path(path)
    data = _read(path)
    unknown = sorted(set(data) - {"sampling", "defaults", "tasks"})
    if unknown:
        raise AdapterBankError(f"suite '{path}': unknown key '{unknown[0]}' (keys: sampling, defaults, tasks)")
    sampling = data.get("sampling", "round-robin")
    if sampling not in SAMPLINGS:
        raise AdapterBankError(f"suite '{path}': sampling must be one of {', '.join(SAMPLINGS)}, got {sampling!r:.40}")
    defaults = _mapping(data.get("defaults", {}), f"suite '{path}': defaults")
    entries = data.get("tasks")
    if not isinstance(entries, list) or not entries:
        raise AdapterBankError(f"suite '{path}' lists no tasks (a `tasks:` list of mappings)")
    if len(entries) > MAX_SUITE_TASKS:
        raise AdapterBankError(f"suite '{path}' lists {len(entries)} tasks; at most {MAX_SUITE_TASKS} per suite")
    tasks = [_task(path, i, entry, defaults, flags, options) for i, entry in enumerate(entries)]
    repeated = sorted(name for name, count in Counter(t.task for t in tasks).items() if count > 1)
    if repeated:
        raise AdapterBankError(f"suite '{path}' names task '{repeated[0]}' twice")
    for key in SHARED:
        values = {getattr(t, key) for t in tasks}
        if len(values) > 1:
            listed = ", ".join(sorted(map(str, values)))
            raise AdapterBankError(f"suite '{path}': every task must use the same {key} (got {listed})")
    return Suite(sampling, tasks)


def _read(path: Path) -> dict[str, Any]:
    if not regular_file(path):
        raise AdapterBankError(f"no suite file '{path}' (a YAML file, not a link)")
    if path.stat().st_size > MAX_SUITE_BYTES:
        raise AdapterBankError(f"suite '{path}' is larger than {MAX_SUITE_BYTES >> 20} MiB")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError, RecursionError) as exc:
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc).splitlines()[0]
        raise AdapterBankError(f"suite '{path}' is not valid YAML: {reason}") from exc
    except OSError as exc:
        raise AdapterBankError(f"cannot read suite '{path}': {exc.strerror or exc}") from exc
    return _mapping(data, f"suite '{path}'")


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise AdapterBankError(f"{where} must be a mapping of names to values")
    return value


def _task(
    path: Path, index: int, entry: Any, defaults: dict[str, Any], flags: dict[str, Any], options: dict[str, Any]
) -> TrainSettings:
    """One entry as TrainSettings: its recipe, then the suite's defaults, its own keys and the command line."""
    entry = _mapping(entry, f"suite '{path}': task {index + 1}")
    given = {**defaults, **entry}
    for key in ("task", "data", "method"):
        if not isinstance(given.get(key), str):
            raise AdapterBankError(f"suite '{path}': task {index + 1} needs `{key}` (a string)")
    if "resume" in given:
        raise AdapterBankError(f"suite '{path}': task {index + 1}: `resume` is a flag of the command (--resume)")
    if "recipe" in given and not isinstance(given["recipe"], str):
        raise AdapterBankError(f"suite '{path}': task {index + 1}: `recipe` must be a name or a .yaml file")
    given["data"] = str(_beside(path, given["data"]))
    if given.get("recipe", "").endswith((".yaml", ".yml")):
        given["recipe"] = str(_beside(path, given["recipe"]))
    fields = {k: v for k, v in given.items() if k in FIELDS}
    entry_options = {k: v for k, v in given.items() if k not in FIELDS}
    # the command line wins over every task: its flags, and its -o KEY=VALUE naming a setting (drop_path_rate=0.1)
    chosen = {k: v for k, v in flags.items() if v is not None} | {k: v for k, v in options.items() if k in FIELDS}
    method_options = {k: v for k, v in options.items() if k not in FIELDS}
    try:
        return resolve({**fields, **chosen}, {**entry_options, **method_options})
    except AdapterBankError as exc:
        raise AdapterBankError(f"suite '{path}': task '{given['task']}': {exc}") from exc


def _beside(suite: Path, value: str) -> Path:
    """A relative path in a suite file is relative to the suite file's folder."""
    if "\0" in value:
        raise AdapterBankError(f"suite '{suite}': the path {value!r:.60} holds a NUL byte")
    try:
        candidate = Path(value).expanduser()
    except RuntimeError as exc:  # ~user that does not exist
        raise AdapterBankError(f"suite '{suite}': cannot expand {value!r:.60} ({exc})") from exc
    return candidate if candidate.is_absolute() else suite.parent / candidate
