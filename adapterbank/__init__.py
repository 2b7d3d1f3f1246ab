"""adapterbank: many tasks on one frozen vision backbone.

Attributes load lazily, so torch-free parts (the bank store, the CLI's startup) do not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "AdapterBankError": "adapterbank.errors",
    "METHODS": "adapterbank.methods",
    "get_method": "adapterbank.methods",
    "create_backbone": "adapterbank.backbones",
    "fingerprint": "adapterbank.anatomy",
    "list_backbones": "adapterbank.backbones",
    "load_checkpoint": "adapterbank.checkpoints",
    "TunedModel": "adapterbank.tuned",
    "tune": "adapterbank.tuned",
    "Bank": "adapterbank.bank",
}

__all__ = sorted(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'adapterbank' has no attribute '{name}'")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
