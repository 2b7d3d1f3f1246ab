"""Method options given on the command line as KEY=VALUE."""

from __future__ import annotations

from typing import Any

import yaml

from adapterbank.errors import AdapterBankError


def parse_options(pairs: list[str]) -> dict[str, Any]:
    """KEY=VALUE pairs with YAML-typed values (4 -> int, 0.1 -> float, true -> bool)."""
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise AdapterBankError(f"--option '{pair}' must look like KEY=VALUE, e.g. prefix_length=4")
        try:
            options[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            options[key.strip()] = value
    return options
