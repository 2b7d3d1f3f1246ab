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
