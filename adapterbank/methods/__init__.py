"""Tuning methods by name."""

from __future__ import annotations

from typing import Any

from adapterbank.errors import AdapterBankError
from adapterbank.method_names import METHOD_NAMES
from adapterbank.methods.adapter import Adapter
from adapterbank.methods.base import Method, MethodConfig
from adapterbank.methods.baselines import Full, Linear
from adapterbank.methods.bitfit import BitFit
from adapterbank.methods.lora import LoRA
from adapterbank.methods.snell import SNELL
from adapterbank.methods.ssf import SSF
from adapterbank.methods.utuning import Prefix, Prompt, UTuning

METHODS: dict[str, type[Method]] = {
    m.name: m for m in (SNELL, SSF, LoRA, Adapter, Prefix, Prompt, UTuning, BitFit, Linear, Full)
}
if tuple(METHODS) != METHOD_NAMES:
    raise RuntimeError("adapterbank.method_names.METHOD_NAMES is out of date with the method registry")


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise AdapterBankError(f"unknown method '{name}': choose one of {', '.join(METHODS)}")
    return METHODS[name]()


def make_config(method: Method, options: dict[str, Any] | None = None) -> MethodConfig:
    """The method's config with `options` applied (None values keep the default), validated."""
    options = {k: v for k, v in (options or {}).items() if v is not None}
    known = set(method.config_type.__dataclass_fields__)
    unknown = sorted(set(options) - known)
    if unknown:
        valid = ", ".join(sorted(known)) or "none"
        raise AdapterBankError(f"method {method.name} has no option '{unknown[0]}' (options: {valid})")
    config = method.config_type(**options)
    config.validate()
    return config


__all__ = ["METHODS", "Method", "MethodConfig", "get_method", "make_config"]
