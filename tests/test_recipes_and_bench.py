"""Recipes resolve as documented; the benchmark commands run end to end (their numbers are never asserted)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adapterbank import AdapterBankError
from adapterbank.recipes import load_recipe
from adapterbank.training.settings import resolve
from tests.conftest import run_cli


def test_vtab_recipe_follows_snell_script_and_flags_override() -> None:
    snell = load_recipe("vtab/cifar", "snell")
    assert (snell["batch_size"], snell["lr"], snell["weight_decay"], snell["epochs"]) == (16, 1e-3, 1e-2, 200)
    assert snell["sparsity"] == 0.9 and snell["rank"] == 32 and snell["augment"] == "none"
    settings = resolve(
        {"task": "c", "method": "snell", "data": "x", "recipe": "vtab/cifar", "epochs": 5}, {"sparsity": 0.3}
    )
    assert settings.epochs == 5 and settings.batch_size == 16 and settings.options == {"rank": 32, "sparsity": 0.3}
    assert settings.train_split == "train800val200" and settings.eval_split == "test"
    lora = resolve({"task": "c", "method": "lora", "data": "x", "recipe": "vtab/cifar"}, {})
    assert (lora.batch_size, lora.lr, lora.weight_decay, lora.options) == (64, 1e-3, 1e-4, {})


def test_every_recipe_loads_for_every_method() -> None:
    root = Path(__file__).resolve().parents[1] / "recipes"
    names = [str(p.relative_to(root).with_suffix("")) for p in root.rglob("*.yaml")]
    assert len(names) >= 25
    for name in names:
        for method in ("snell", "ssf", "lora", "bitfit", "linear", "full"):
            settings = resolve({"task": "t", "method": method, "data": "x", "recipe": name}, {})
            assert settings.epochs >= 1 and settings.lr > 0


def test_bad_recipes(tmp_path: Path) -> None:
    with pytest.raises(AdapterBankError, match="no recipe 'vtab/nope'"):
        load_recipe("vtab/nope", "ssf")
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: [1, 2\n")
    with pytest.raises(AdapterBankError, match="not valid YAML"):
        load_recipe(str(bad), "ssf")
    bad.write_text("methods:\n  snell:\n    ranks: 8\n")
    with pytest.raises(AdapterBankError, match="no option 'ranks'"):
        from adapterbank.methods import get_method, make_config

        make_config(
            get_method("snell"), resolve({"task": "t", "method": "snell", "data": "x", "recipe": str(bad)}, {}).options
        )


def test_bench_export_runs_and_reports_ratios() -> None:
    result = run_cli(
        "bench",
        "export",
        "--backbone",
        "convnext_atto",
        "--methods",
        "ssf,lora",
        "--batches",
        "2",
        "--rounds",
        "1",
        "--json",
    )
    assert result.returncode == 0, result.stderr[-1500:]
    rows = json.loads(result.stdout)
    assert {r["graph"] for r in rows} == {"bare backbone", "ssf", "lora"}
    assert all(r["same_ops_as_bare"] for r in rows) and all(r["ratio"] > 0 for r in rows)


def test_bench_train_memory_runs() -> None:
    result = run_cli(
        "bench",
        "train-memory",
        "--backbone",
        "vit_tiny_patch16_224",
        "--batch",
        "2",
        "--steps",
        "1",
        "--methods",
        "linear,lora,snell",
    )
    assert result.returncode == 0, result.stderr[-1500:]
    assert "x LoRA memory" in result.stdout and "snell" in result.stdout


def test_bench_serve_runs() -> None:
    result = run_cli(
        "bench",
        "serve",
        "--backbone",
        "convnext_atto",
        "--methods",
        "ssf,lora",
        "--tasks",
        "2",
        "--batch",
        "4",
        "--rounds",
        "1",
        "--resident",
        "3",
    )
    assert result.returncode == 0, result.stderr[-1500:]
    assert "mixed / single" in result.stdout and "extra / task tensors" in result.stdout
