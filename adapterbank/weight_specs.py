"""One reading of a backbone weight spec (`--checkpoint`), for every command and function that takes one.

    None          timm's own pretrained weights, fetched by timm          stored as 'timm-pretrained'
    'none'        random initialization                                   stored as 'random-init'
    'packaged'    the architecture's weights from an installed package    stored as 'packaged'
    a file path   a local checkpoint (formats: adapterbank.checkpoints)   stored as the file's name

What is stored is the bank's record of where its backbone came from (BackboneIdentity.checkpoint).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from adapterbank.errors import AdapterBankError
from adapterbank.packaged_weights import packaged_checkpoint


@dataclass(frozen=True)
class BackboneWeights:
    path: Path | None  # a file to load; None: timm's own weights (pretrained or random)
    label: str  # stored in the bank as the backbone's `checkpoint`
    pretrained: bool = False  # timm fetches its pretrained weights


def resolve_weights(spec: str | None, arch: str) -> BackboneWeights:
    """What `spec` means for the architecture `arch`; a missing file or package is refused here, in one line."""
    if spec is None:
        return BackboneWeights(None, "timm-pretrained", pretrained=True)
    if spec == "none":
        return BackboneWeights(None, "random-init")
    if spec == "packaged":
        return BackboneWeights(packaged_checkpoint(arch), "packaged")
    path = Path(spec)
    if not path.is_file() and not path.is_dir():  # a folder: a Hugging Face model folder (checkpoints.py)
        raise AdapterBankError(f"checkpoint '{path}' does not exist")
    return BackboneWeights(path, path.name)
