"""Hostile files under a bank: nothing is unpickled, no link is followed out of the bank, runs do not collide."""

from __future__ import annotations

import copy
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from adapterbank import AdapterBankError, TunedModel, create_backbone
from adapterbank.atomic_files import TEMP_PREFIX
from adapterbank.bank.store import Bank
from adapterbank.bank.torch_bridge import commit, create_bank, load_backbone, task_record
from adapterbank.training.resume import RunFolder
from tests.helpers import SHARED_DATA, cli_in_process, one_line_error, run_cli, train_args

pytestmark = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data is not present")


class _Payload:
    """Unpickling this writes a marker file: what a crafted checkpoint would do with torch.load."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "code ran"))


def test_resume_never_unpickles_a_planted_checkpoint(convnext_weights: Path, tmp_path: Path) -> None:
    """A DeepSpeed-style run folder with a pickle that runs code: `train --resume` refuses it without loading."""
    bank, marker = tmp_path / "bank", tmp_path / "pwned"
    point = bank / ".runs" / "job" / "step4"
    point.mkdir(parents=True)
    (bank / ".runs" / "job" / "latest").write_text("step4")
    for name in ("mp_rank_00_model_states.pt", "tensors.safetensors", "state.json"):
        (point / name).write_bytes(pickle.dumps({"rng": _Payload(marker)}))
    result = cli_in_process(
        *train_args(convnext_weights, bank, "job", "--method", "ssf", "--max-steps", "1", "--resume")
    )
    assert "rerun without --resume" in one_line_error(result)
    (bank / ".runs" / "job" / "latest").write_text('{"step": "step4"}')  # now names it: the files are not JSON
    result = cli_in_process(
        *train_args(convnext_weights, bank, "job", "--method", "ssf", "--max-steps", "1", "--resume")
    )
    assert "rerun without --resume" in one_line_error(result)
    assert not marker.exists()


def test_runs_link_out_of_the_bank_is_refused(convnext_weights: Path, tmp_path: Path) -> None:
    """BANK/.runs pointing elsewhere: training refuses it, and the target's folder of the same name survives."""
    bank, outside = tmp_path / "bank", tmp_path / "precious"
    (outside / "job").mkdir(parents=True)
    (outside / "job" / "keep.txt").write_text("mine")
    bank.mkdir()
    (bank / ".runs").symlink_to(outside)
    result = cli_in_process(*train_args(convnext_weights, bank, "job", "--method", "ssf", "--max-steps", "1"))
    assert "symbolic link" in one_line_error(result)
    assert (outside / "job" / "keep.txt").read_text() == "mine"


def _small_bank(path: Path) -> tuple[Bank, TunedModel]:
    torch.manual_seed(0)
    backbone = create_backbone("test_resnet")
    bank = create_bank(path, backbone, "test_resnet", "random-init")
    return bank, TunedModel(backbone, "test_resnet", "linear", [3], None, bank.identity.fingerprint)


@pytest.mark.parametrize("link", [".lock", "tasks"])
def test_commit_never_writes_through_a_link(link: str, tmp_path: Path) -> None:
    bank, model = _small_bank(tmp_path / "bank")
    target = tmp_path / "elsewhere"
    if link == "tasks":
        target.mkdir()
        os.rename(bank.path / "tasks", tmp_path / "old-tasks")
    (bank.path / link).unlink(missing_ok=True)
    (bank.path / link).symlink_to(target)
    with pytest.raises(AdapterBankError, match="symbolic link"):
        commit(bank, task_record(model, "t"))
    assert not target.exists() or not any(target.iterdir())


@pytest.mark.slow
def test_a_second_training_of_the_same_task_is_refused(convnext_weights: Path, tmp_path: Path) -> None:
    """While a run holds its task's run folder, another `train` of that task stops at once and touches nothing."""
    bank = tmp_path / "bank"
    first = run_cli(*train_args(convnext_weights, bank, "other", "--method", "linear", "--max-steps", "1"))
    assert first.returncode == 0, first.stderr[-1500:]
    runs = RunFolder(bank, "job")
    runs.save(3, {"model/w": torch.zeros(2)}, {"step": 3})
    with runs.locked():
        result = run_cli(*train_args(convnext_weights, bank, "job", "--method", "ssf", "--max-steps", "1"))
        assert "being trained by another process" in one_line_error(result)
    assert runs.load() is not None  # the first run's resume point is intact
    assert Bank(bank).tasks() == ["other"]


@pytest.mark.slow
def test_method_options_from_the_command_line_are_used_or_refused(convnext_weights: Path, tmp_path: Path) -> None:
    bank = tmp_path / "bank"
    result = run_cli(
        *train_args(convnext_weights, bank, "r", "--method", "snell", "-o", "rank=4", "-o", "sparsity=0.7"),
        "--max-steps",
        "1",
    )
    assert result.returncode == 0, result.stderr[-1500:]
    assert {"rank": 4, "sparsity": 0.7}.items() <= Bank(bank).load("r", with_tensors=False).config.items()
    bad = cli_in_process(*train_args(convnext_weights, bank, "r2", "--method", "snell", "-o", "rank=abc"))
    assert "rank" in one_line_error(bad)


@pytest.mark.slow
def test_same_seed_fgvc_runs_are_identical(convnext_weights: Path, tmp_path: Path) -> None:
    """Random crops, flips and jitter draw per (seed, epoch, image), in the main process or in workers."""
    args = ("--method", "ssf", "--max-steps", "3", "--augment", "fgvc", "--seed", "5")
    banks = [tmp_path / "a", tmp_path / "b"]
    for bank, workers in zip(banks, ("0", "2"), strict=True):
        result = run_cli(*train_args(convnext_weights, bank, "t", *args, "--workers", workers))
        assert result.returncode == 0, result.stderr[-1500:]
    first, second = (Bank(b).load("t").tensors for b in banks)
    for key, value in first.items():
        np.testing.assert_array_equal(value, second[key], err_msg=key)


# ---- crafted and damaged task files: listed, reported, never served, never crash ------------------------------

FUZZ_METHODS = {"good_ssf": "ssf", "good_lora": "lora", "victim": "ssf"}


@pytest.fixture(scope="module")
def fuzz_bank(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    backbone = create_backbone("test_resnet")
    path = tmp_path_factory.mktemp("fuzz") / "bank"
    bank = create_bank(path, backbone, "test_resnet", "random-init")
    for name, method in FUZZ_METHODS.items():
        model = TunedModel(copy.deepcopy(backbone), "test_resnet", method, [3], None, bank.identity.fingerprint)
        commit(bank, task_record(model.eval(), name))
    return path


def _corrupt(file: Path, kind: str, rng: np.random.Generator) -> None:
    import h5py

    data = bytearray(file.read_bytes())
    if kind == "truncate":
        file.write_bytes(bytes(data[: int(rng.integers(1, len(data)))]))
    elif kind == "flip":
        for i in rng.integers(0, len(data), 16):
            data[i] ^= 0xFF
        file.write_bytes(bytes(data))
    elif kind == "attribute_types":
        with h5py.File(file, "r+") as f:
            key = ["format_version", "config", "class_names", "metrics", "num_tensors", "training", "task"][
                int(rng.integers(0, 7))
            ]
            f.attrs[key] = {"format_version": "1", "config": "[1, 2]", "class_names": 7, "metrics": "[]",
                            "num_tensors": "three", "training": "null", "task": np.arange(3)}[key]  # fmt: skip
    elif kind == "huge_shape":
        with h5py.File(file, "r+") as f:
            key = next(iter(f["tensors"]))
            checksum = f["tensors"][key].attrs["sha256"]
            del f["tensors"][key]
            dataset = f["tensors"].create_dataset(key, shape=(1 << 20, 1 << 20), dtype="f4", chunks=(64, 64))
            dataset.attrs["sha256"] = checksum
    elif kind == "link_loop":
        with h5py.File(file, "r+") as f:
            key = next(iter(f["tensors"]))
            del f["tensors"][key]
            f["tensors"][key] = h5py.SoftLink(f"/tensors/{key}")
    elif kind == "nan":
        from adapterbank.bank.store import tensor_checksum

        with h5py.File(file, "r+") as f:
            key = next(iter(f["tensors"]))
            array = f["tensors"][key][()]
            array.flat[0] = np.nan
            f["tensors"][key][...] = array
            f["tensors"][key].attrs["sha256"] = tensor_checksum(array)  # a checksum that matches the NaN
    elif kind == "external_link":  # a link out of the file, to a FIFO that would block any reader
        os.mkfifo(file.parent.parent.parent / "pipe")
        with h5py.File(file, "r+") as f:
            key = next(iter(f["tensors"]))
            del f["tensors"][key]
            f["tensors"][key] = h5py.ExternalLink(str(file.parent.parent.parent / "pipe"), "/x")
    elif kind == "folder":
        file.unlink()
        file.mkdir()
    elif kind == "fifo":
        file.unlink()
        os.mkfifo(file)


KINDS = ["truncate", "flip", "attribute_types", "huge_shape", "link_loop", "nan", "folder", "fifo", "external_link"]


@pytest.mark.parametrize("round_", range(18))
def test_fuzzed_task_files_never_crash_and_the_healthy_tasks_serve(fuzz_bank: Path, tmp_path: Path, round_) -> None:
    import resource
    import shutil

    from adapterbank.bank.checkup import verify
    from adapterbank.runtime import TorchRuntime

    rng = np.random.default_rng(round_)
    bank_dir = tmp_path / "bank"
    shutil.copytree(fuzz_bank, bank_dir)
    kind = KINDS[round_ % len(KINDS)]
    _corrupt(bank_dir / "tasks" / "victim.h5", kind, rng)
    (bank_dir / "tasks" / "bad name!.h5").write_bytes(b"stray")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    bank = Bank(bank_dir)
    checkup = verify(bank)
    bad = {what for what, _ in checkup.problems}
    assert "tasks/bad name!.h5" in bad and set(checkup.ok) >= {"good_ssf", "good_lora"}, (kind, checkup)
    runtime = TorchRuntime(bank)
    problems = runtime.prepare([*runtime.task_names(), "victim"])  # every task read, as requests would
    assert {"good_ssf", "good_lora"} <= set(runtime.task_names()) and not {"good_ssf", "good_lora"} & set(problems)
    flagged = bad & {"victim", "tasks/victim.h5"}  # a folder or FIFO in its place is no task file at all
    if kind != "flip" or flagged:  # 16 flipped bytes may land in slack space and change nothing
        assert flagged and "victim" in problems and "victim" not in runtime.resident.tasks, kind
    logits = runtime.predict(torch.randn(2, 3, 160, 160), ["good_ssf", "good_lora"])
    assert all(torch.isfinite(row).all() for row in logits)
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mib < 512, f"{kind}: resident memory grew {grown_mib:.0f} MiB"


def test_bank_ls_and_predict_list_and_isolate_a_broken_task(fuzz_bank: Path, tmp_path: Path) -> None:
    import json
    import shutil

    from PIL import Image

    bank_dir = tmp_path / "bank"
    shutil.copytree(fuzz_bank, bank_dir)
    _corrupt(bank_dir / "tasks" / "victim.h5", "truncate", np.random.default_rng(0))
    listing = cli_in_process("bank", "ls", "--bank", str(bank_dir), "--json")
    assert listing.returncode == 0, listing.stderr[-1500:]
    rows = {row["task"]: row for row in json.loads(listing.stdout)}
    assert rows["victim"]["method"] == "BAD" and rows["good_ssf"]["method"] == "ssf"
    Image.new("RGB", (40, 30), (200, 10, 10)).save(tmp_path / "x.png")
    (tmp_path / "req.csv").write_text("\ufeffpath,task\nx.png,good_ssf\nx.png,victim\nx.png,good_lora\n")  # Excel BOM
    out = cli_in_process("predict", str(tmp_path / "req.csv"), "--bank", str(bank_dir))
    assert out.returncode == 1  # one row failed; the others are answered
    answered = [line.split(",") for line in out.stdout.strip().splitlines()[1:]]
    assert [row[1] for row in answered] == ["good_ssf", "victim", "good_lora"]
    assert answered[0][2] and answered[2][2] and "not a readable HDF5 file" in answered[1][-1]


# ---- nothing lost --------------------------------------------------------------------------------------------


def test_a_bank_without_bank_h5_is_not_overwritten_and_repairs(fuzz_bank: Path, tmp_path: Path) -> None:
    import shutil

    bank_dir = tmp_path / "bank"
    shutil.copytree(fuzz_bank, bank_dir)
    (bank_dir / "bank.h5").unlink()
    backbone_bytes = (bank_dir / "backbone.safetensors").read_bytes()
    with pytest.raises(AdapterBankError, match="verify --repair"):
        create_bank(bank_dir, create_backbone("test_vit"), "test_vit", "random-init")
    assert (bank_dir / "backbone.safetensors").read_bytes() == backbone_bytes and not (bank_dir / "bank.h5").exists()
    wrong = cli_in_process("bank", "verify", "--repair", "--arch", "test_vit", "--bank", str(bank_dir))
    assert "pass the right --arch" in one_line_error(wrong)
    fixed = cli_in_process("bank", "verify", "--repair", "--arch", "test_resnet", "--bank", str(bank_dir))
    assert fixed.returncode == 0, fixed.stderr[-1500:]
    assert sorted(Bank(bank_dir).tasks()) == sorted(FUZZ_METHODS) and "3 tasks ok" in fixed.stdout


@pytest.mark.slow
def test_verify_checks_the_backbone_file_and_the_graph_cache(fuzz_bank: Path, tmp_path: Path) -> None:
    import shutil

    from adapterbank.bank.checkup import verify
    from adapterbank.runtime import ONNXRuntime

    bank_dir = tmp_path / "bank"
    shutil.copytree(fuzz_bank, bank_dir)
    bank = Bank(bank_dir)
    runtime = ONNXRuntime(bank, tasks=["good_ssf"])
    [graph] = runtime.cache_dir.glob("*.onnx")
    x = torch.randn(2, 3, 160, 160)
    expected = runtime.predict(x, ["good_ssf", "good_ssf"])
    graph.write_bytes(graph.read_bytes()[:-64] + bytes(64))  # tampered: same size, other bytes
    planted = bank_dir / ".onnx"
    planted.mkdir()
    (planted / "evil.onnx").write_bytes(b"graph")
    result = verify(bank)  # the damaged graph in the user's cache is dropped; the one planted in the bank ignored
    assert not result.problems and any("damaged" in line for line in result.fixed) and planted.exists()
    assert any("removed" in line for line in verify(bank, repair=True).fixed) and not planted.exists()
    again = ONNXRuntime(bank, tasks=["good_ssf"]).predict(x, ["good_ssf", "good_ssf"])  # rebuilt, same answers
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(again, expected, strict=True))
    data = bytearray((bank_dir / "backbone.safetensors").read_bytes())
    (bank_dir / "backbone.safetensors").write_bytes(bytes(data[: len(data) // 2]))
    report = cli_in_process("bank", "verify", "--bank", str(bank_dir))
    assert report.returncode == 1 and "bad: backbone.safetensors" in report.stderr
    (bank_dir / "backbone.safetensors").write_bytes(b"\xff" * 8 + b"{not json")  # a corrupt header
    (tmp_path / "req.csv").write_text("x.png,good_ssf\n")
    assert "backbone.safetensors" in one_line_error(
        cli_in_process("predict", str(tmp_path / "req.csv"), "--bank", str(bank_dir))
    )


def test_long_task_names_are_refused_before_training(convnext_weights: Path, tmp_path: Path) -> None:
    result = cli_in_process(*train_args(convnext_weights, tmp_path / "bank", "t" * 240, "--method", "ssf"))
    assert "at most 200" in one_line_error(result)
    assert not (tmp_path / "bank").exists()


@pytest.mark.slow
def test_predict_out_is_whole_or_absent(fuzz_bank: Path, tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys
    import time

    from PIL import Image

    from tests.helpers import REPO

    Image.new("RGB", (40, 30), (200, 10, 10)).save(tmp_path / "x.png")
    (tmp_path / "req.csv").write_text("".join("x.png,good_ssf\n" for _ in range(20000)))
    assert "must name a file" in one_line_error(
        cli_in_process("predict", str(tmp_path / "req.csv"), "--bank", str(fuzz_bank), "--out", str(tmp_path))
    )
    out = tmp_path / "answers.csv"
    child = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cli",
            "predict",
            str(tmp_path / "req.csv"),
            "--bank",
            str(fuzz_bank),
            "--out",
            str(out),
        ],
        cwd=REPO,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while not list(tmp_path.glob(f"{TEMP_PREFIX}answers.csv-*")) and child.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert not out.exists()  # killed mid-way: no truncated answers under the final name


# ---- silent wrong results and one-line errors ------------------------------------------------------------------


def _vtab(root: Path, train: str, test: str) -> Path:
    from PIL import Image

    (root / "images").mkdir(parents=True)
    for i in range(4):
        Image.new("RGB", (8, 8), (i * 60, 0, 0)).save(root / "images" / f"{i}.png")
    (root / "train800val200.txt").write_text(train)
    (root / "test.txt").write_text(test)
    return root


def test_labels_that_would_silently_change_the_task_are_refused(tmp_path: Path) -> None:
    import json

    from adapterbank.data import open_dataset

    vtab = _vtab(tmp_path / "v", "images/0.png 0\nimages/1.png 1\n", "images/2.png 50\n")
    with pytest.raises(AdapterBankError, match="label 50"):
        open_dataset(vtab)
    for bad in (1.7, None, "3", True):
        fgvc = tmp_path / f"f{bad}"
        fgvc.mkdir()
        (fgvc / "train.json").write_text(json.dumps({"a.png": 0, "b.png": bad}))
        with pytest.raises(AdapterBankError, match="must be an integer"):
            open_dataset(fgvc)
    csv_root = tmp_path / "c"
    csv_root.mkdir()
    (csv_root / "train.csv").write_text("path,label\na.png,0\nb.png,1\n")
    (csv_root / "test.csv").write_text("path,label\nc.png,99\n")
    with pytest.raises(AdapterBankError, match=r"'99' does not occur in train\.csv"):
        open_dataset(csv_root)
    (csv_root / "test.csv").write_text("path,label\nc.png,1.5\n")
    with pytest.raises(AdapterBankError, match=r"'1\.5' is not an integer class id"):
        open_dataset(csv_root)
    (csv_root / "test.csv").write_bytes(b"\x89PNG\x00\xff\xfe binary")
    with pytest.raises(AdapterBankError, match="not a UTF-8 CSV"):
        open_dataset(csv_root)


def test_images_decode_to_the_range_they_mean_and_hostile_files_are_row_errors(tmp_path: Path) -> None:
    from PIL import Image

    from adapterbank.data.images import load_rgb

    Image.fromarray((np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)).save(tmp_path / "deep.png")
    deep = np.asarray(load_rgb(tmp_path / "deep.png"))
    assert deep[1, 0, 0] == 4 and deep[32, 0, 0] == 128 and deep.max() == 255  # 16-bit scaled, not clipped
    Image.fromarray((np.arange(64 * 64).reshape(64, 64) / 4095).astype(np.float32)).save(tmp_path / "f.tiff")
    assert np.asarray(load_rgb(tmp_path / "f.tiff")).max() == 255  # float [0, 1], not black
    Image.new("1", (20000, 20000)).save(tmp_path / "bomb.png")  # ~50 KB on disk, 400 megapixels decoded
    with pytest.raises(AdapterBankError, match="decompression bomb"):
        load_rgb(tmp_path / "bomb.png")
    os.mkfifo(tmp_path / "pipe.png")
    with pytest.raises(AdapterBankError, match="not a regular file"):
        load_rgb(tmp_path / "pipe.png")  # returns at once: a FIFO is never opened


@pytest.mark.parametrize(
    ("flag", "value", "fragment"),
    [
        ("--image-size", "0", "image-size"),
        ("--image-size", "-32", "image-size"),
        ("--checkpoint-every", "-1", "checkpoint-every"),
        ("--lr", "nan", "--lr"),
        ("--lr", "inf", "--lr"),
        ("--weight-decay", "nan", "weight_decay"),
        ("--warmup-epochs", "nan", "warmup_epochs"),
        ("--workers", "-1", "--workers"),
        ("--seed", str(2**50), "--seed"),
    ],
)
def test_bad_training_numbers_are_refused_before_any_work(flag: str, value: str, fragment: str, tmp_path: Path) -> None:
    result = cli_in_process("train", "--task", "t", "--method", "ssf", "--data", str(tmp_path), flag, value,
                     "--bank", str(tmp_path / "bank"))  # fmt: skip
    assert fragment in one_line_error(result) and not (tmp_path / "bank").exists()


def test_export_refuses_an_opset_it_cannot_write_and_a_name_with_a_path(fuzz_bank: Path, tmp_path: Path) -> None:
    opset = cli_in_process(
        "export", "--task", "good_ssf", "--bank", str(fuzz_bank), "--out", str(tmp_path), "--opset", "17"
    )
    assert "opset 17" in one_line_error(opset)
    named = cli_in_process(
        "export", "--multi-task", "good_ssf", "--name", "a/b", "--bank", str(fuzz_bank), "--out", str(tmp_path)
    )
    assert "graph name 'a/b'" in one_line_error(named)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"rank": 0}, "rank of 'blocks.0.attn.qkv' is 0"),
        ({"rank": 65}, "not in 1..64 (the layer's size)"),
        ({"config": {"lora_dropout": "lots"}}, "lora_dropout must be a number"),
        ({"b_rows": 5}, "needs lora_A of"),
        ({"config": {"lora_alpha": "abc"}}, "must be a number"),
        ({"config": {"alpha_pattern": {"(.*?){15}(?!)": 2.0}}}, "takes too long to match"),  # minutes in `re`
        ({"config": {"alpha_pattern": {"(": 2.0}}}, "not a valid regular expression"),
        ({"config": []}, "not a JSON object"),
    ],
)
def test_hostile_peft_folders_are_one_line_errors(change: dict, fragment: str, tmp_path: Path) -> None:
    import json

    from safetensors.numpy import save_file

    torch.manual_seed(0)
    bank = create_bank(tmp_path / "bank", create_backbone("test_vit"), "test_vit", "random-init")
    dim, rank = 64, change.get("rank", 2)
    weights = {
        "base_model.model.blocks.0.attn.qkv.lora_A.weight": np.zeros((rank, dim), np.float32),
        "base_model.model.blocks.0.attn.qkv.lora_B.weight": np.zeros((change.get("b_rows", 3 * dim), rank), np.float32),
        "base_model.model.head.weight": np.zeros((3, dim), np.float32),
        "base_model.model.head.bias": np.zeros(3, np.float32),
    }
    folder = tmp_path / "peft"
    folder.mkdir()
    save_file(weights, str(folder / "adapter_model.safetensors"))
    config = change.get("config", {})
    config = config if isinstance(config, list) else {"peft_type": "LORA", "r": rank, "lora_alpha": 4, **config}
    (folder / "adapter_config.json").write_text(json.dumps(config))
    result = cli_in_process("bank", "import-peft", str(folder), "--task", "p", "--bank", str(bank.path))
    assert fragment in one_line_error(result)
    assert bank.tasks() == []


def test_stored_configs_cannot_make_a_runtime_allocate(fuzz_bank: Path, tmp_path: Path) -> None:
    """A record whose config implies huge tensors, or whose preprocessing asks for 60000 px, is refused from its
    shapes on the meta device before any model is built; a task removed between listing and loading is skipped."""
    import dataclasses
    import shutil

    from adapterbank.runtime import TorchRuntime
    from adapterbank.runtime.slots import load_healthy

    bank_dir = tmp_path / "bank"
    shutil.copytree(fuzz_bank, bank_dir)
    bank = Bank(bank_dir)
    lora = bank.load("good_lora")
    crafted = lora.shapes  # files as an attacker writes them: the tensors do not match what the config implies
    bank.commit(dataclasses.replace(lora, name="huge", config={**lora.config, "rank": 10**9}), crafted)
    bank.commit(dataclasses.replace(lora, name="wide", training={"image_size": 60000}), crafted)
    bank.commit(dataclasses.replace(lora, name="typed", config={**lora.config, "dropout": "x"}), crafted)
    crop = {"size": 160, "resize": "crop", "crop_pct": 1e-4, "interpolation": "bicubic", "mean": [0.5] * 3,
            "std": [0.5] * 3}  # fmt: skip
    bank.commit(dataclasses.replace(lora, name="cropped", training={"preprocessing": crop}), crafted)
    bank.commit(dataclasses.replace(lora, name="scored", metrics={"accuracy": "x"}), crafted)
    records, broken = load_healthy(bank, [*bank.tasks(), "gone"])
    assert set(broken) == {"huge", "wide", "typed", "cropped"} and "gone" not in broken
    assert "expected" in broken["huge"] and "image size" in broken["wide"] and "must be float" in broken["typed"]
    assert {r.name for r in records} == {*FUZZ_METHODS, "scored"}
    runtime = TorchRuntime(bank)
    assert set(runtime.prepare(runtime.task_names())) == {"huge", "wide", "typed", "cropped"}
    assert set(runtime.resident.tasks) == {*FUZZ_METHODS, "scored"}
    with pytest.raises(AdapterBankError, match="no task 'typo'"):
        TorchRuntime(bank, tasks=["good_ssf", "typo"])  # asked for by name: a missing task is an error
    listing = cli_in_process("bank", "ls", "--bank", str(bank_dir))
    assert listing.returncode == 0 and "scored" in listing.stdout, listing.stderr[-1500:]


def test_verify_prunes_graphs_of_replaced_tasks(fuzz_bank: Path, tmp_path: Path) -> None:
    import shutil

    from adapterbank.bank.checkup import verify
    from adapterbank.runtime import ONNXRuntime

    bank_dir = tmp_path / "bank"
    shutil.copytree(fuzz_bank, bank_dir)
    bank = Bank(bank_dir)
    owned = TunedModel(load_backbone(bank), "test_resnet", "full", [3], None, bank.identity.fingerprint)
    commit(bank, task_record(owned.eval(), "owned"))  # a task with a merged graph of its own
    runtime = ONNXRuntime(bank, tasks=["good_ssf", "owned"])
    graphs = sorted(p.name for p in runtime.cache_dir.glob("*.onnx"))
    assert len(graphs) == 2 and graphs[0].startswith("stacked-")  # SSF's stacked graph serves any SSF task
    commit(bank, bank.load("good_ssf"))
    commit(bank, bank.load("owned"))  # a new version: its own graph is stale, the stacked one is not
    assert any("1 stale" in line for line in verify(bank).fixed)
    assert sorted(p.name for p in runtime.cache_dir.glob("*.onnx")) == graphs[:1]


def test_a_binary_request_file_is_one_line(fuzz_bank: Path, tmp_path: Path) -> None:
    (tmp_path / "req.csv").write_bytes(bytes(range(256)) * 4)
    assert "not a UTF-8 CSV" in one_line_error(
        cli_in_process("predict", str(tmp_path / "req.csv"), "--bank", str(fuzz_bank))
    )
