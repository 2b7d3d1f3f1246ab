"""Session-wide test set-up and fixtures; shared helpers live in tests/helpers.py."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import torch

# ONNXRuntime's graph cache (the user's cache by default) goes to a folder of this test session, for the CLI
# processes the tests start too
os.environ.setdefault("ADAPTERBANK_CACHE", tempfile.mkdtemp(prefix="adapterbank-cache-"))

# parallel test processes (pytest -n N, one module per process: docs/testing.md) share the cores, and so do the CLI
# processes they start: N processes of all cores' threads each would fight over them
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    _threads = max(1, len(os.sched_getaffinity(0)) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    os.environ["OMP_NUM_THREADS"] = str(_threads)
    torch.set_num_threads(_threads)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def convnext_weights(tmp_path_factory) -> Path:
    """Random convnext_atto weights saved as a plain timm .pth: a backbone checkpoint for CLI training runs."""
    import timm

    path = tmp_path_factory.mktemp("weights") / "convnext_atto.pth"
    torch.manual_seed(0)
    torch.save(timm.create_model("convnext_atto").state_dict(), path)
    return path
