"""The backbone a training run tunes: chosen before DeepSpeed starts (a wrong name, image size or weights file
fails at once), then taken from the bank or put into a new one."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import nn

from adapterbank.anatomy import fingerprint
from adapterbank.backbones import check_backbone_name, check_input_size, create_backbone
from adapterbank.bank.store import Bank
from adapterbank.bank.torch_bridge import create_bank, load_backbone
from adapterbank.errors import AdapterBankError
from adapterbank.training.distributed import ProcessInfo, barrier
from adapterbank.training.settings import DEFAULT_BACKBONE, TrainSettings
from adapterbank.weight_specs import BackboneWeights, resolve_weights


@dataclass(frozen=True)
class BackboneChoice:
    """A run's backbone architecture and weights."""

    arch: str
    weights: BackboneWeights
    in_bank: bool  # the bank exists and holds this backbone; else a new bank is created with it

    def create(self) -> nn.Module:
        return create_backbone(self.arch, checkpoint=self.weights.path, pretrained=self.weights.pretrained)


def choose_backbone(settings: TrainSettings) -> BackboneChoice:
    """The bank's backbone if the bank exists (checked against --backbone), else --backbone or the default; decided
    once, by every process before any of them creates the bank."""
    path = Path(settings.bank)
    in_bank = (path / "bank.h5").is_file()
    if in_bank:
        arch = Bank(path).identity.arch
        if settings.backbone and settings.backbone.split(".")[0] != arch.split(".")[0]:
            raise AdapterBankError(f"bank '{path}' holds {arch}, not {settings.backbone}; use another --bank")
    else:
        arch = settings.backbone or DEFAULT_BACKBONE
        check_backbone_name(arch)
    if settings.image_size:
        check_input_size(arch, settings.image_size)  # before the bank is created
    return BackboneChoice(arch, resolve_weights(settings.checkpoint, arch), in_bank)


def open_or_create_bank(settings: TrainSettings, choice: BackboneChoice, info: ProcessInfo) -> tuple[Bank, nn.Module]:
    """The bank and its backbone: an existing bank's (refused when --checkpoint names other weights), or a new
    bank's, created by rank 0 with the chosen weights."""
    path = Path(settings.bank)
    if choice.in_bank:
        bank = Bank(path)
        if settings.checkpoint is not None and fingerprint(choice.create(), choice.arch) != bank.identity.fingerprint:
            raise AdapterBankError(f"--checkpoint weights differ from the backbone of bank '{path}'")
    else:
        if info.is_main:
            create_bank(path, choice.create(), choice.arch, choice.weights.label)
        barrier()
        bank = Bank(path)
    return bank, load_backbone(bank, settings.drop_path_rate)
