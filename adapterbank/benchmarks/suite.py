"""One `train --suite` job against separate `train` jobs of the same tasks and settings, side by side.

Both sides run as the user runs them, as fresh `adapterbank train` processes (Python start-up, torch and DeepSpeed
import, engine set-up and backbone load included), into banks of their own; wall time is measured around the
processes, accuracy is read back from each bank.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from adapterbank.bank.store import Bank
from adapterbank.benchmarks.accuracy import default_recipe, find_tasks
from adapterbank.errors import AdapterBankError
from adapterbank.packaged_weights import PACKAGED_ARCH


@dataclass
class SuiteRow:
    method: str
    task: str
    separate_accuracy: float
    suite_accuracy: float


@dataclass
class SuiteTiming:
    method: str
    separate_seconds: float
    suite_seconds: float


def suite_benchmark(
    data_root: Path,
    workdir: Path,
    methods: Sequence[str] = ("ssf", "lora"),
    tasks: Sequence[str] | None = None,
    recipe: str | None = None,
    backbone: str = PACKAGED_ARCH,
    checkpoint: str = "packaged",
    sampling: str = "round-robin",
) -> tuple[list[SuiteRow], list[SuiteTiming]]:
    """Per method: every task as its own `train` process, then all of them as one `train --suite` process."""
    available = find_tasks(data_root)
    chosen = list(tasks) if tasks else list(available)
    unknown = [t for t in chosen if t not in available]
    if unknown:
        raise AdapterBankError(f"no task '{unknown[0]}' under '{data_root}' (tasks: {', '.join(available)})")
    recipe = recipe or default_recipe(backbone)
    common = ["--backbone", backbone, "--checkpoint", checkpoint, "--recipe", recipe]
    rows, timings = [], []
    for index, method in enumerate(methods):
        separate_bank, suite_bank = workdir / f"separate-{method}", workdir / f"suite-{method}"
        suite_file = workdir / f"suite-{method}.yaml"
        entries = [{"task": t, "data": str(available[t].resolve()), "method": method} for t in chosen]
        suite_file.write_text(yaml.safe_dump({"sampling": sampling, "tasks": entries}, sort_keys=False))

        def separate(method: str = method, bank: Path = separate_bank) -> None:
            for task in chosen:
                _train([*common, "--task", task, "--data", str(available[task]), "--method", method, "--bank",
                        str(bank)])  # fmt: skip

        def together(suite_file: Path = suite_file, bank: Path = suite_bank) -> None:
            _train([*common, "--suite", str(suite_file), "--bank", str(bank)])

        # alternate which side runs first, so neither always finds the file cache and imports warm
        seconds = {}
        for name, side in (("separate", separate), ("suite", together))[:: 1 if index % 2 == 0 else -1]:
            started = time.perf_counter()
            side()
            seconds[name] = time.perf_counter() - started
        timings.append(SuiteTiming(method, seconds["separate"], seconds["suite"]))
        alone, together = Bank(separate_bank), Bank(suite_bank)
        for task in chosen:
            rows.append(
                SuiteRow(
                    method,
                    task,
                    alone.load(task, with_tensors=False).metrics["accuracy"],
                    together.load(task, with_tensors=False).metrics["accuracy"],
                )
            )
    return rows, timings


def _train(args: list[str]) -> None:
    done = subprocess.run([sys.executable, "-m", "cli", "train", *args], capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise AdapterBankError(f"`adapterbank train {' '.join(args[-4:])}` failed: {last}")
