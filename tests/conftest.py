from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

# ONNXRuntime's graph cache (the user's cache by default) goes to a folder of this test session, for the CLI
# processes the tests start too
os.environ.setdefault("ADAPTERBANK_CACHE", tempfile.mkdtemp(prefix="adapterbank-cache-"))

FAMILIES = ["vit_tiny_patch16_224", "swin_tiny_patch4_window7_224", "convnext_atto", "tf_efficientnet_lite0"]
MERGEABLE = ["snell", "ssf", "lora", "bitfit"]


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


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


def images(n: int, size: int = 224, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="session")
def convnext_weights(tmp_path_factory) -> Path:
    """Random convnext_atto weights saved as a plain timm .pth: a backbone checkpoint for CLI training runs."""
    import timm

    path = tmp_path_factory.mktemp("weights") / "convnext_atto.pth"
    torch.manual_seed(0)
    torch.save(timm.create_model("convnext_atto").state_dict(), path)
    return path
