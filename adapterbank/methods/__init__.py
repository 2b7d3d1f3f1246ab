"""Tuning methods by name."""

from __future__ import annotations

import dataclasses
import math
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
    for field in dataclasses.fields(method.config_type):
        if field.name in options and not _fits(options[field.name], str(field.type)):
            raise AdapterBankError(
                f"method {method.name} option '{field.name}' must be {field.type}, got {options[field.name]!r}"
            )
    config = method.config_type(**options)
    config.validate()
    return config


def _fits(value: Any, annotation: str) -> bool:
    """Whether an option value (from YAML, JSON or a stored record) has the type its field declares."""
    kinds = {part.strip() for part in annotation.split("|")}
    if value is None:
        return "None" in kinds
    if isinstance(value, bool):
        return "bool" in kinds
    if isinstance(value, int) and ("int" in kinds or "float" in kinds):
        return True
    if isinstance(value, float):
        return "float" in kinds and math.isfinite(value)
    return isinstance(value, str) and "str" in kinds


__all__ = ["METHODS", "Method", "MethodConfig", "get_method", "make_config"]
