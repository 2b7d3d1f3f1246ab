"""Training through real DeepSpeed engines on CPU: one process, two processes (gloo), resume after SIGKILL."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from adapterbank.bank.store import Bank
from adapterbank.bank.torch_bridge import load_tasks
from adapterbank.evaluation import evaluate_task
from tests.helpers import REPO, SHARED_DATA, TRAIN_DATA, cli_in_process, run_cli, train_args

pytestmark = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data is not present")
DATA = TRAIN_DATA


@pytest.fixture
def checkpoint(convnext_weights: Path) -> Path:
    return convnext_weights


@pytest.mark.slow
def test_one_process_run_commits_a_reproducible_task(checkpoint: Path, tmp_path: Path) -> None:
    bank = tmp_path / "bank"
    result = run_cli(
        *train_args(
            checkpoint, bank, "pneu", "--method", "snell", "--rank", "4", "--sparsity", "0.5", "--max-steps", "6"
        )
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "pneu" in result.stdout and "accuracy" in result.stdout
    record = Bank(bank).load("pneu")
    assert record.method == "snell" and record.config["rank"] == 4 and record.metrics["split"] == "test"
    assert record.training["steps"] == 6 and record.training["layout"] == "vtab"
    reproduced = evaluate_task(bank, "pneu", DATA, None, workers=0)
    assert reproduced["accuracy"] == record.metrics["accuracy"] and reproduced["n"] == record.metrics["n"] == 624
    evaluated = cli_in_process(
        "eval", "--task", "pneu", "--data", str(DATA), "--bank", str(bank), "--json", "--workers", "0"
    )
    assert evaluated.returncode == 0 and f'"accuracy": {record.metrics["accuracy"]}' in evaluated.stdout


@pytest.mark.slow
def test_released_regularisers_train_and_the_bank_keeps_the_ema(checkpoint: Path, tmp_path: Path) -> None:
    """SSF's FGVC recipe (simple aug + random erasing, mixup/cutmix on soft targets, EMA, stochastic depth,
    cool-down) trains; the bank stores the EMA of the task's tensors, which is also what the reported accuracy
    measured. EMA 0.9999 starts from the weights after step 1 and barely moves: the banked tensors stay much
    closer to their initial values than those of the same run without it."""
    from adapterbank.bank.torch_bridge import load_backbone
    from adapterbank.tuned import TunedModel

    bank = tmp_path / "bank"
    common = ("--method", "ssf", "--max-steps", "4", "--lr", "1e-2")
    recipe = ["-o", "mixup=0.8", "-o", "cutmix=1.0", "-o", "label_smoothing=0.1", "-o", "random_erase=0.25"]
    recipe += ["--augment", "simple", "-o", "train_interpolation=random", "-o", "drop_path_rate=0.1"]
    recipe += ["-o", "cooldown_epochs=1", "-o", "mean=[0.485, 0.456, 0.406]", "-o", "crop_pct=0.875"]
    for task, extra in (("plain", recipe), ("averaged", [*recipe, "-o", "ema_decay=0.9999"])):
        result = run_cli(*train_args(checkpoint, bank, task, *common, *extra))
        assert result.returncode == 0, result.stderr[-2000:]
    opened = Bank(bank)
    records = {name: opened.load(name) for name in ("plain", "averaged")}
    training = records["averaged"].training
    assert (training["mixup"], training["ema_decay"], training["drop_path_rate"], training["augment"]) == (
        0.8,
        0.9999,
        0.1,
        "simple",
    )
    assert training["preprocessing"]["mean"] == [0.485, 0.456, 0.406] and training["preprocessing"]["resize"] == "crop"
    assert training["preprocessing"]["crop_pct"] == 0.875 and training["preprocessing"]["size"] == 64
    backbone = load_backbone(opened)
    torch.manual_seed(0)  # the trainer seeds with --seed (0) just before it builds the task
    initial = TunedModel(backbone, opened.identity.arch, "ssf", [2], {}, opened.identity.fingerprint).state(0)

    def moved(name: str) -> float:
        tensors = records[name].tensors
        return sum(float((torch.from_numpy(tensors[k]) - v).abs().sum()) for k, v in initial.items())

    assert 0 < moved("averaged") < 0.6 * moved("plain")
    reproduced = evaluate_task(bank, "averaged", DATA, None, workers=0)
    assert reproduced["accuracy"] == records["averaged"].metrics["accuracy"]
    stochastic = load_backbone(opened, drop_path_rate=0.1)  # training only: a served model has no DropPath
    assert max(getattr(m, "drop_prob", 0.0) for m in stochastic.modules()) > 0
    served, _ = load_tasks(opened, ["averaged"])
    assert max(getattr(m, "drop_prob", 0.0) for m in served.modules()) == 0


@pytest.mark.slow
def test_utuning_trains_with_method_options_on_a_vit(tmp_path: Path) -> None:
    """`--method utuning` with options from -o, on a ViT (the family U-Tuning needs), through DeepSpeed to the bank,
    at 32 px (position embeddings resampled as timm does); both predict backends then answer at 32 px too."""
    import timm

    weights = tmp_path / "vit_tiny.pth"
    torch.save(timm.create_model("vit_tiny_patch16_224").state_dict(), weights)
    bank = tmp_path / "bank"
    data = SHARED_DATA / "imagefolder" / "hymenoptera"
    args = ["--task", "ants", "--method", "utuning", "--data", str(data), "--backbone", "vit_tiny_patch16_224"]
    options = ["-o", "prefix_length=4", "-o", "prompt_length=2", "-o", "adapter_dim=4"]
    result = run_cli(
        "train", *args, "--checkpoint", str(weights), "--bank", str(bank), "--batch-size", "8", "--max-steps", "2",
        "--workers", "0", "--image-size", "32", *options,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    record = Bank(bank).load("ants")
    assert record.method == "utuning" and record.config["prefix_length"] == 4 and record.config["adapter_dim"] == 4
    assert tuple(record.shapes["blocks.0.attn.prompt"]) == (2, 192) and record.training["steps"] == 2
    assert record.training["preprocessing"]["size"] == 32
    reproduced = evaluate_task(bank, "ants", data, None, workers=0)
    assert reproduced["accuracy"] == record.metrics["accuracy"] and reproduced["n"] == 153
    requests = tmp_path / "requests.csv"
    images = sorted((data / "val").rglob("*.jpg"))[:: 153 // 6][:6]
    requests.write_text("path,task\n" + "".join(f"{p},ants\n" for p in images))
    answers = {}
    for backend in ("torch", "onnx"):
        out = run_cli("predict", str(requests), "--bank", str(bank), "--backend", backend)
        assert out.returncode == 0, out.stderr[-2000:]
        answers[backend] = [line.split(",")[2] for line in out.stdout.strip().splitlines()[1:]]
    assert answers["torch"] == answers["onnx"] and len(answers["onnx"]) == 6


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_process_gloo_run_commits_one_task(checkpoint: Path, tmp_path: Path) -> None:
    bank = tmp_path / "bank"
    args = train_args(checkpoint, bank, "pair", "--method", "ssf", "--max-steps", "4", "--eval-every", "1")
    port = str(_free_port())
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "cli", *args],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={
                **os.environ,
                "RANK": str(r),
                "LOCAL_RANK": str(r),
                "WORLD_SIZE": "2",
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": port,
            },
        )
        for r in range(2)
    ]
    outputs = [p.communicate(timeout=900) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs[0][1][-2000:] + outputs[1][1][-2000:]
    record = Bank(bank).load("pair")
    assert Bank(bank).tasks() == ["pair"] and record.training["world_size"] == 2
    assert record.training["steps"] == 4


@pytest.mark.slow
def test_resume_after_sigkill_matches_an_uninterrupted_run(checkpoint: Path, tmp_path: Path) -> None:
    """Every random draw is restored or keyed by (seed, epoch, image): random crops, flips and colour jitter, mixup
    (NumPy), SNELL's branch dropout and DropPath (torch)."""
    common = ("--method", "snell", "--rank", "4", "--max-steps", "24", "--checkpoint-every", "3", "--seed", "3")
    common += ("--augment", "fgvc", "-o", "mixup=0.8", "--workers", "1")
    straight = run_cli(*train_args(checkpoint, tmp_path / "a", "job", *common))
    assert straight.returncode == 0, straight.stderr[-2000:]
    bank = tmp_path / "b"
    victim = subprocess.Popen(
        [sys.executable, "-m", "cli", *train_args(checkpoint, bank, "job", *common)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    latest = bank / ".runs" / "job" / "latest"
    deadline = time.time() + 600
    while not (latest.is_file() and "step3" not in latest.read_text()) and victim.poll() is None:
        assert time.time() < deadline
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert not (bank / "tasks" / "job.h5").exists(), "the run finished before it could be killed"
    resumed = run_cli(*train_args(checkpoint, bank, "job", *common, "--resume"))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    resumed_from = Bank(bank).load("job")
    assert resumed_from.training["steps"] == 24
    first, _ = load_tasks(Bank(tmp_path / "a"), ["job"])
    second, _ = load_tasks(Bank(bank), ["job"])
    for key, value in first.state(0).items():
        assert torch.allclose(second.state(0)[key], value, atol=1e-6, rtol=1e-5), key
    assert not (bank / ".runs" / "job").exists()


@pytest.mark.slow
def test_resume_refuses_changed_settings(checkpoint: Path, tmp_path: Path) -> None:
    bank = tmp_path / "bank"
    base = train_args(checkpoint, bank, "job", "--method", "ssf", "--checkpoint-every", "2", "--max-steps", "3")
    victim = subprocess.Popen(
        [sys.executable, "-m", "cli", *base], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    latest = bank / ".runs" / "job" / "latest"
    while not latest.is_file() and victim.poll() is None:
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    if (bank / "tasks" / "job.h5").exists():
        pytest.skip("the short run finished before the kill")
    result = run_cli(
        *train_args(
            checkpoint,
            bank,
            "job",
            "--method",
            "ssf",
            "--checkpoint-every",
            "2",
            "--max-steps",
            "3",
            "--lr",
            "5e-3",
            "--resume",
        )
    )
    assert result.returncode == 2 and "other settings" in result.stderr


@pytest.mark.parametrize(
    ("args", "fragment", "env"),
    [
        (["train", "--task", "t", "--method", "snel", "--data", "x"], "unknown method 'snel'", {}),
        (["train", "--task", "t", "--method", "ssf", "--data", "/nonexistent"], "does not exist", {}),
        (
            [
                "train",
                "--task",
                "t",
                "--method",
                "ssf",
                "--data",
                str(DATA),
                "--bank",
                "{tmp}/bank",
                "--max-steps",
                "1",
            ],
            "pass --checkpoint FILE",
            {"HF_HUB_OFFLINE": "1"},
        ),
        (["train", "--task", "t", "--method", "ssf", "--data", str(DATA), "--epochs", "0"], "at least 1", {}),
        (["train", "--task", "a/b", "--method", "ssf", "--data", str(DATA)], "invalid task name", {}),
        (["train", "--task", "t", "--method", "prefix", "--data", str(DATA), "-o", "length"], "KEY=VALUE", {}),
        (
            ["train", "--task", "t", "--method", "prefix", "--data", str(DATA), "-o", "depth=3"],
            "method prefix has no option 'depth' (options: length)",
            {},
        ),
    ],
)
def test_train_bad_input_is_one_line(args: list[str], fragment: str, env: dict, tmp_path: Path) -> None:
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    # in this process unless the case needs an environment variable that libraries read when first imported
    result = run_cli(*args, env=env) if env else cli_in_process(*args)
    assert result.returncode == 2, result.stderr[-1000:]
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and fragment in error_lines[0], result.stderr[-1000:]
