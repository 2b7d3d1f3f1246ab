"""Exports run in ONNX Runtime: parity with the unmerged model, zero overhead against the bare backbone graph,
dynamic batch, complete manifests, the multi-task graph, and clean refusals that write nothing."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import onnx
import pytest
import timm
import torch

from adapterbank import TunedModel, create_backbone
from adapterbank.anatomy import backbone_state
from adapterbank.bank.torch_bridge import commit, create_bank, load_tasks, task_record
from adapterbank.export import export_multi_task, export_task, graph_stats, sha256_file, to_onnx
from adapterbank.inspection import perturb_task_parameters
from adapterbank.ort_sessions import session
from tests.helpers import FAMILIES, MERGEABLE, cli_in_process, images

CLASSES = 6
MANIFEST_KEYS = {
    "task",
    "method",
    "backbone",
    "fingerprint",
    "classes",
    "preprocessing",
    "opset",
    "sha256",
    "parity_max_abs_error",
    "merged",
    "extra_ops",
    "precision",
}


def pretrained_like(model: torch.nn.Module) -> torch.nn.Module:
    """Distinct values in every tensor, as trained weights have: timm's init repeats ones and zeros, which the
    exporter would deduplicate in the bare graph and not in a merged one, skewing the overhead comparison."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    return model


# every merging method on every family, except Swin (the slowest export) with the two that merge most differently:
# SNELL's materialized sparse deltas and SSF folded into Linear and LayerNorm (LoRA and BitFit fold the same way)
EXPORTED = [(arch, m) for arch in FAMILIES for m in MERGEABLE if not arch.startswith("swin") or m in ("snell", "ssf")]


@pytest.fixture(scope="module")
def families(tmp_path_factory) -> Callable[[str], dict]:
    """Each family's bank (a task of every merging method) and bare graph, built once for the module."""
    built: dict[str, dict] = {}

    def family(arch: str) -> dict:
        if arch not in built:
            built[arch] = _build_family(arch, tmp_path_factory.mktemp(arch))
        return built[arch]

    return family


def _build_family(arch: str, root: Path) -> dict:
    torch.manual_seed(5)
    backbone = pretrained_like(create_backbone(arch))
    bank = create_bank(root / "bank", backbone, arch, "random-init")
    for i, method in enumerate(MERGEABLE):
        model = TunedModel(copy.deepcopy(backbone), arch, method, [CLASSES]).eval()
        perturb_task_parameters(model, std=0.05, seed=i)
        commit(bank, task_record(model, method, class_names=[f"c{k}" for k in range(CLASSES)]))
    bare = timm.create_model(arch, num_classes=CLASSES).eval()
    bare.load_state_dict(backbone_state(backbone), strict=False)
    torch.nn.init.normal_(bare.get_classifier().bias)  # a zero bias would be optimised out of the bare graph
    to_onnx(bare, (images(2),), ["images"], root / "bare.onnx", 18)
    return {"arch": arch, "bank": bank, "root": root, "bare": graph_stats(root / "bare.onnx")}


@pytest.mark.parametrize(("arch", "method"), EXPORTED)
@pytest.mark.slow
def test_merged_export(families: Callable[[str], dict], arch: str, method: str) -> None:
    family = families(arch)
    bank, out = family["bank"], family["root"] / "exports"
    result = export_task(bank, method, out)
    assert result.parity_error <= 1e-4
    stats = graph_stats(result.graph)
    assert stats["ops"] == family["bare"]["ops"]
    assert stats["initializer_sizes"] == family["bare"]["initializer_sizes"]
    model, _ = load_tasks(bank, [method])
    graph = session(result.graph)
    for batch in (1, 7):
        x = images(batch, seed=batch)
        with torch.no_grad():
            expected = model(x).numpy()
        assert np.abs(graph.run(["logits"], {"images": x.numpy()})[0] - expected).max() <= 1e-4
    manifest = json.loads(result.manifest.read_text())
    assert set(manifest) >= MANIFEST_KEYS
    assert manifest["sha256"] == sha256_file(result.graph)
    assert manifest["task"] == method and manifest["method"] == method and manifest["merged"] is True
    assert manifest["classes"] == [f"c{k}" for k in range(CLASSES)]
    assert manifest["preprocessing"]["input_size"] == list(bank.identity.input_size)
    assert manifest["fingerprint"] == bank.identity.fingerprint and manifest["opset"] >= 17


def _bank_with_tasks(root: Path, arch: str, method: str, classes: list[int]) -> tuple:
    torch.manual_seed(9)
    backbone = create_backbone(arch)
    bank = create_bank(root / "bank", backbone, arch, "random-init")
    for i, c in enumerate(classes):
        model = TunedModel(copy.deepcopy(backbone), arch, method, [c]).eval()
        perturb_task_parameters(model, std=0.05, seed=10 + i)
        commit(bank, task_record(model, f"t{i}"))
    return bank, backbone


@pytest.mark.parametrize(("arch", "method"), [("vit_tiny_patch16_224", "ssf"), ("convnext_atto", "lora")])
@pytest.mark.slow
def test_multi_task_graph_equals_each_task_alone(tmp_path: Path, arch: str, method: str) -> None:
    """Each sample of a mixed batch through the multi-task graph equals its task alone (the one-task model, which
    its own exported graph equals: test_merged_export)."""
    classes = [5, 3, 7]
    bank, _ = _bank_with_tasks(tmp_path, arch, method, classes)
    multi = export_multi_task(bank, ["t0", "t1", "t2"], "all3", tmp_path / "out")
    ids = np.array([2, 0, 1, 2, 1], dtype=np.int64)
    x = images(len(ids), seed=3)
    mixed = session(multi.graph).run(["logits"], {"images": x.numpy(), "task_id": ids})[0]
    for task in range(3):
        model, _ = load_tasks(bank, [f"t{task}"])
        rows = ids == task
        with torch.no_grad():
            alone = model(x[torch.from_numpy(rows)]).numpy()
        assert np.abs(mixed[rows, : classes[task]] - alone).max() <= 1e-4
        assert np.isneginf(mixed[rows, classes[task] :]).all()
    manifest = json.loads(multi.manifest.read_text())
    assert [t["task"] for t in manifest["tasks"]] == ["t0", "t1", "t2"] and manifest["sha256"] == sha256_file(
        multi.graph
    )


def test_fp16_export(tmp_path: Path) -> None:
    bank, _ = _bank_with_tasks(tmp_path, "vit_tiny_patch16_224", "ssf", [4])
    result = export_task(bank, "t0", tmp_path / "out", fp16=True)
    graph = onnx.load(str(result.graph))
    assert any(init.data_type == onnx.TensorProto.FLOAT16 for init in graph.graph.initializer)
    assert result.info["precision"] == "fp16" and result.parity_error > 0


def test_multi_task_refusals(tmp_path: Path) -> None:
    bank, backbone = _bank_with_tasks(tmp_path, "vit_tiny_patch16_224", "ssf", [4, 4])
    commit(bank, task_record(TunedModel(copy.deepcopy(backbone), bank.identity.arch, "snell", [4]), "sparse"))
    commit(bank, task_record(TunedModel(copy.deepcopy(backbone), bank.identity.arch, "lora", [4]), "lowrank"))
    result = cli_in_process(
        "export", "--multi-task", "t0,sparse", "--bank", str(bank.path), "--out", str(tmp_path / "o")
    )
    assert result.returncode == 2 and "snell" in result.stderr and result.stderr.count("\n") == 1
    result = cli_in_process(
        "export", "--multi-task", "t0,lowrank", "--bank", str(bank.path), "--out", str(tmp_path / "o")
    )
    assert result.returncode == 2 and "mix methods" in result.stderr
    assert not (tmp_path / "o").exists()


def test_bad_input_writes_nothing(tmp_path: Path) -> None:
    bank, _ = _bank_with_tasks(tmp_path, "convnext_atto", "ssf", [4])
    out = tmp_path / "out"
    cases = [
        (["export", "--task", "nope", "--onnx", "--bank", str(bank.path)], "no task 'nope'"),
        (["export", "--task", "t0", "--onnx", "--bank", str(tmp_path / "missing")], "no bank at"),
        (
            ["export", "--task", "t0", "--onnx", "--bank", str(bank.path), "--out", str(tmp_path / "f.txt" / "x")],
            "not writable",
        ),
        (["export", "--task", "t0", "--onnx", "--bank", str(bank.path), "--opset", "13"], "opset 13"),
    ]
    (tmp_path / "f.txt").write_text("a file where a folder should be")
    for args, fragment in cases:
        result = cli_in_process(*args, "--out", str(out)) if "--out" not in args else cli_in_process(*args)
        assert result.returncode == 2, result.stderr
        assert fragment in result.stderr and result.stderr.count("\n") == 1
    with h5py.File(bank.task_file("t0"), "r+") as f:
        f.attrs["fingerprint"] = "0" * 64
    result = cli_in_process("export", "--task", "t0", "--bank", str(bank.path), "--out", str(out))
    assert result.returncode == 2 and "another backbone" in result.stderr
    assert not out.exists() or not list(out.iterdir())


def test_failed_parity_leaves_no_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bank, _ = _bank_with_tasks(tmp_path, "convnext_atto", "lora", [4])
    monkeypatch.setattr("adapterbank.export.FP32_TOLERANCE", 0.0)
    with pytest.raises(Exception, match="differ from PyTorch"):
        export_task(bank, "t0", tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []


def test_cli_export_writes_graph_and_manifest(tmp_path: Path) -> None:
    bank, _ = _bank_with_tasks(tmp_path, "convnext_atto", "bitfit", [4])
    result = cli_in_process(
        "export", "--task", "t0", "--onnx", "--bank", str(bank.path), "--out", str(tmp_path / "out"), "--batch", "1"
    )  # a one-image parity batch still gives a dynamic-batch graph
    assert result.returncode == 0, result.stderr
    assert "zero overhead" in result.stdout
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["t0.json", "t0.onnx"]
