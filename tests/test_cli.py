"""The CLI as users run it: methods working end to end, and bad input as one line with a non-zero exit."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm

from adapterbank.method_names import METHOD_NAMES
from tests import checkpoint_formats as fmt
from tests.helpers import assert_one_line_error, cli_in_process, run_cli


def test_inspect_shows_every_method_merging_on_real_weights() -> None:
    result = cli_in_process("inspect")
    assert result.returncode == 0, result.stderr
    for method in ("snell", "ssf", "lora", "bitfit", "linear", "full"):
        row = next(line for line in result.stdout.splitlines() if f" {method} " in line)
        assert " yes " in row
    adapter = next(line for line in result.stdout.splitlines() if " adapter " in line)
    assert " n/a " in adapter  # trains, cannot merge
    utuning = next(line for line in result.stdout.splitlines() if " utuning " in line)
    assert "not for this" in utuning
    assert "efficientnet-lite0" in result.stdout


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["inspect", "--method", "snel"], ["unknown method 'snel'", "snell, ssf, lora, adapter, prefix, prompt"]),
        (["inspect", "--method", "prefix"], ["method prefix extends self-attention", "not EfficientNet"]),
        (["inspect", "--backbone", "vit_tiny", "--checkpoint", "none"], ["unknown backbone", "vit_tiny_patch16_224"]),
        (["quickstart", "--backbone", "convnext_atto"], ["offline on packaged weights", "vit_small_patch14_dinov2"]),
        (["quickstart", "--backbone", "vit_small_patch14_dinov2", "--image-size", "100"], ["multiple of 14", "100"]),
        (
            ["inspect", "--method", "snell", "--rank", "7", "--backbone", "convnext_atto", "--checkpoint", "none"],
            ["even", "got 7"],
        ),
        (
            [
                "inspect",
                "--method",
                "snell",
                "--sparsity",
                "1.0",
                "--backbone",
                "convnext_atto",
                "--checkpoint",
                "none",
            ],
            ["[0, 1)"],
        ),
    ],
)
def test_bad_input_is_one_line(args: list[str], fragments: list[str]) -> None:
    assert_one_line_error(cli_in_process(*args), *fragments)


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["predict", "--snell-cache-mb", "-1", "requests.csv"], ["'--snell-cache-mb'", "greater than or equal to 0"]),
        (["predict", "--batch-size", "many", "requests.csv"], ["'--batch-size'", "integer", "predict --help"]),
        (["export", "--no-such-option"], ["--no-such-option"]),
        (["predict"], ["Missing argument 'requests'"]),
    ],
)
def test_usage_errors_are_one_line_with_exit_2(args: list[str], fragments: list[str]) -> None:
    result = run_cli(*args)
    assert_one_line_error(result, *fragments)
    assert result.returncode == 2


def test_misfit_checkpoint_from_cli(tmp_path: Path) -> None:
    fmt.write_timm_pth(timm.create_model("vit_tiny_patch16_224"), tmp_path / "tiny.pth")
    result = cli_in_process(
        "inspect", "--backbone", "vit_small_patch16_224", "--checkpoint", str(tmp_path / "tiny.pth")
    )
    assert_one_line_error(result, "does not fit vit_small_patch16_224", "cls_token")


def test_debug_shows_the_traceback() -> None:
    result = run_cli("--debug", "inspect", "--method", "snel")
    assert result.returncode != 0
    assert "Traceback" in result.stderr and "AdapterBankError" in result.stderr


def test_a_bare_group_shows_its_help() -> None:
    result = run_cli("bench")
    assert "serve" in result.stdout + result.stderr and "error:" not in result.stderr


def test_methods_lists_all() -> None:
    result = run_cli("methods")
    assert result.returncode == 0
    for method in METHOD_NAMES:
        assert method in result.stdout


def test_packaged_backbones_are_listed_as_installed() -> None:
    result = cli_in_process("backbones", "--packaged")
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if "==" in line]
    assert [row.split()[1] for row in rows] == ["tf_efficientnet_lite0", "vit_small_patch14_dinov2"]
    assert all("yes" in row for row in rows)
