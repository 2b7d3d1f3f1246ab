"""What several test modules share: running the CLI (in a fresh process, or in this one), inputs, and checks."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
TRAIN_DATA = SHARED_DATA / "vtab-1k" / "pneumonia"  # the small real task CLI training tests share

FAMILIES = ["vit_tiny_patch16_224", "swin_tiny_patch4_window7_224", "convnext_atto", "tf_efficientnet_lite0"]
MERGEABLE = ["snell", "ssf", "lora", "bitfit"]


def run_cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run `adapterbank ARGS` as a user would, in a fresh process."""
    return subprocess.run(
        [sys.executable, "-m", "cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd or REPO,
        timeout=900,
        env={**os.environ, **(env or {})},
    )


def cli_in_process(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run `adapterbank ARGS` through the same entry point and error handling in this process: no process start
    and torch import per call (seconds each). Output a C library writes to the file descriptors themselves is not
    captured. main(argv) does not own the process: no command changes its allocator (cli/ownership.py)."""
    from cli.main import main

    out, err = io.StringIO(), io.StringIO()
    code = 0
    with (
        _working_directory(cwd or REPO),
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(err),
        _warnings_to_stderr(),
    ):
        try:
            main(list(args))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    return subprocess.CompletedProcess(["adapterbank", *args], code, out.getvalue(), err.getvalue())


@contextlib.contextmanager
def _warnings_to_stderr() -> Iterator[None]:
    """Warnings printed to stderr under Python's default filters, as a fresh process would (pytest records them
    instead), so that a stray warning line fails the one-line error checks here too."""
    with warnings.catch_warnings():
        warnings.resetwarnings()
        warnings.simplefilter("default")
        for quiet in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
            warnings.simplefilter("ignore", quiet)
        warnings.showwarning = _print_warning
        yield


def _print_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


@contextlib.contextmanager
def _working_directory(path: Path) -> Iterator[None]:
    before = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def images(n: int, size: int = 224, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def assert_close_relative(actual: torch.Tensor, expected: torch.Tensor, tol: float = 1e-5) -> None:
    """Within tol of the logit scale, and absolute for logits below 1 (float32 rounding is not relative to them)."""
    scale = expected.abs().max().clamp_min(1.0)
    assert ((actual - expected).abs().max() / scale).item() <= tol


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    """A failed command printed exactly one line, `error: ...`, holding every fragment, and no traceback."""
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    for fragment in fragments:
        assert fragment in lines[0]
    assert "Traceback" not in result.stderr + result.stdout


def one_line_error(result: subprocess.CompletedProcess) -> str:
    """The one `error:` line of a user error (exit code 2) among other output, e.g. a progress bar."""
    assert result.returncode == 2, result.stderr[-1500:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-1500:]
    return lines[0]


def train_args(checkpoint: Path, bank: Path, task: str, *extra: str, data: Path = TRAIN_DATA) -> list[str]:
    """`adapterbank train` of a small real task (VTAB-1k pneumonia unless `data`) on convnext_atto at 64 px."""
    return [
        "train",
        "--task",
        task,
        "--data",
        str(data),
        "--backbone",
        "convnext_atto",
        "--checkpoint",
        str(checkpoint),
        "--bank",
        str(bank),
        "--image-size",
        "64",
        "--batch-size",
        "16",
        "--lr",
        "1e-3",
        "--workers",
        "0",
        *extra,
    ]
