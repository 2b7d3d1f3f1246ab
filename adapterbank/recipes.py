"""Recipes: the papers' hyper-parameters per method x benchmark x task, as YAML files that cite their source.

`--recipe vtab/cifar` reads recipes/vtab/cifar.yaml; a path to a .yaml file works too. A recipe may hold keys for
every method under `methods:`; keys at the top level apply to all. Command-line flags override the recipe.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from adapterbank.errors import AdapterBankError


def recipe_dirs() -> list[Path]:
    """$ADAPTERBANK_RECIPES, then the recipes/ folder of a source checkout."""
    dirs = []
    if os.environ.get("ADAPTERBANK_RECIPES"):
        dirs.append(Path(os.environ["ADAPTERBANK_RECIPES"]))
    dirs.append(Path(__file__).resolve().parents[1] / "recipes")
    return dirs


def find_recipe(name: str) -> Path:
    candidate = Path(name)
    if candidate.suffix in (".yaml", ".yml") and candidate.is_file():
        return candidate
    for folder in recipe_dirs():
        path = folder / f"{name}.yaml"
        if path.is_file():
            return path
    known = sorted(
        {str(p.relative_to(d).with_suffix("")) for d in recipe_dirs() if d.is_dir() for p in d.rglob("*.yaml")}
    )
    raise AdapterBankError(f"no recipe '{name}' (known: {', '.join(known) or 'none'}; or pass a .yaml file)")


def load_recipe(name: str, method: str) -> dict[str, Any]:
    """The recipe's settings for `method`: shared keys updated by its `methods: {method: ...}` entry."""
    path = find_recipe(name)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise AdapterBankError(f"recipe '{path}' is not valid YAML: {str(exc).splitlines()[0]}") from exc
    if not isinstance(data, dict):
        raise AdapterBankError(f"recipe '{path}' must be a mapping of settings")
    methods = data.pop("methods", {}) or {}
    data.pop("source", None)
    own = methods.get(method) if isinstance(methods, dict) else None
    if not isinstance(methods, dict) or not isinstance(own or {}, dict):
        raise AdapterBankError(f"recipe '{path}': `methods` must map method names to mappings of settings")
    settings = {**data, **(own or {})}
    settings["recipe"] = str(path)
    return settings
