"""adapterbank: many tasks on one frozen vision backbone."""

from adapterbank.backbones import create_backbone, fingerprint, list_backbones
from adapterbank.checkpoints import load_checkpoint
from adapterbank.errors import AdapterBankError
from adapterbank.methods import METHODS, get_method
from adapterbank.tuned import TunedModel, tune

__all__ = [
    "METHODS",
    "AdapterBankError",
    "TunedModel",
    "create_backbone",
    "fingerprint",
    "get_method",
    "list_backbones",
    "load_checkpoint",
    "tune",
]
__version__ = "0.1.0"
