"""`adapterbank train --suite`: suite files, the per-slot optimizer, and a real suite through DeepSpeed that is
killed, resumed, and compared task by task with separate runs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from adapterbank.bank.store import Bank
from adapterbank.errors import AdapterBankError
from adapterbank.training.slot_optimizer import SlotAdamW
from adapterbank.training.suite import plan_groups
from adapterbank.training.suite_file import load_suite
from tests.helpers import REPO, SHARED_DATA, TRAIN_DATA, cli_in_process, run_cli

HYMENOPTERA = SHARED_DATA / "imagefolder" / "hymenoptera"


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text)
    return path


def test_each_task_resolves_recipe_then_defaults_then_its_entry_then_the_command_line(tmp_path: Path) -> None:
    write(tmp_path, "recipe.yaml", "epochs: 7\nlr: 0.5\nbatch_size: 4\nmethods:\n  lora:\n    rank: 2\n")
    (tmp_path / "data").mkdir()
    suite = write(
        tmp_path,
        "suite.yaml",
        "sampling: proportional\n"
        "defaults: {recipe: recipe.yaml, lr: 0.1, seed: 5}\n"
        "tasks:\n"
        "  - {task: a, data: data, method: lora}\n"
        "  - {task: b, data: /elsewhere, method: lora, lr: 0.2, rank: 8, recipe: recipe.yaml}\n",
    )
    loaded = load_suite(suite, {"epochs": 3, "bank": None, "resume": False}, {"sparsity": None})
    a, b = loaded.tasks
    assert loaded.sampling == "proportional"
    assert (a.epochs, a.lr, a.batch_size, a.seed, a.options) == (3, 0.1, 4, 5, {"rank": 2})
    assert (b.epochs, b.lr, b.options) == (3, 0.2, {"rank": 8})
    assert a.data == str(tmp_path / "data") and b.data == "/elsewhere"  # relative to the suite file's folder
    assert a.bank == b.bank == "bank"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("tasks: []\n", "lists no tasks"),
        ("tasks:\n  - {task: a, method: ssf}\n", "task 1 needs `data`"),
        ("sampling: random\ntasks:\n  - {task: a, data: d, method: ssf}\n", "sampling must be one of"),
        ("epochs: 3\ntasks:\n  - {task: a, data: d, method: ssf}\n", "unknown key 'epochs'"),
        ("tasks:\n  - {task: a, data: d, method: ssf}\n  - {task: a, data: e, method: ssf}\n", "names task 'a' twice"),
        ("tasks:\n  - {task: a, data: d, method: ssf, depth: 3}\n", "task 'a': method ssf has no option 'depth'"),
        ("tasks:\n  - {task: a, data: d, method: ssf, resume: true}\n", "`resume` is a flag"),
        ("tasks:\n  - {task: a, data: d, method: ssf, epochs: 0}\n", "task 'a': --epochs must be at least 1"),
        ("tasks:\n  - {task: a, data: d, method: ssf, bank: x}\n  - {task: b, data: d, method: ssf}\n", "same bank"),
        ("tasks: [unclosed\n", "not valid YAML"),
        ("- just\n- a list\n", "must be a mapping"),
        ("tasks:\n  - {task: a, data: d, method: ssf, epochs: '3'}\n", "setting 'epochs' must be int, got '3'"),
        ("tasks:\n  - {task: a, data: d, method: ssf, epochs: true}\n", "setting 'epochs' must be int"),
        ("tasks:\n  - {task: a, data: d, method: ssf, lr: [1]}\n", "setting 'lr' must be float"),
        ("tasks:\n  - {task: a, data: d, method: ssf, backbone: [1]}\n", "setting 'backbone' must be str or none"),
        ("tasks:\n  - {task: a, data: d, method: ssf, mean: abc}\n", "setting 'mean' must be list[float] or none"),
        ("tasks:\n  - {task: a, data: d, method: ssf, options: {rank: 2}}\n", "not an `options:` mapping"),
        ("defaults: false\ntasks:\n  - {task: a, data: d, method: ssf}\n", "defaults must be a mapping"),
        ("tasks:\n  - {task: a, data: ~nosuchuser1234/x, method: ssf}\n", "cannot expand"),
        ('tasks:\n  - {task: a, data: "d\\0x", method: ssf}\n', "NUL byte"),
        ("tasks: " + "[" * 3000 + "]" * 3000 + "\n", "not valid YAML"),
    ],
)
def test_bad_suite_files_are_one_line_errors(tmp_path: Path, text: str, fragment: str) -> None:
    with pytest.raises(AdapterBankError, match=None) as error:
        load_suite(write(tmp_path, "suite.yaml", text), {}, {})
    assert fragment in str(error.value) and "\n" not in str(error.value)


def test_the_command_line_wins_over_every_task_settings_given_with_o_too(tmp_path: Path) -> None:
    entry = "{task: a, data: d, method: lora, drop_path_rate: 0.1, rank: 2}"
    suite = write(tmp_path, "suite.yaml", f"tasks:\n  - {entry}\n")
    [task] = load_suite(suite, {}, {"drop_path_rate": 0.3, "rank": 4}).tasks
    assert task.drop_path_rate == 0.3 and task.options == {"rank": 4}


def test_a_recipe_whose_methods_are_not_mappings_is_one_line(tmp_path: Path) -> None:
    write(tmp_path, "bad.yaml", "lr: 0.1\nmethods: [1]\n")
    suite = write(tmp_path, "suite.yaml", "tasks:\n  - {task: a, data: d, method: ssf, recipe: bad.yaml}\n")
    with pytest.raises(AdapterBankError, match="`methods` must map method names"):
        load_suite(suite, {}, {})


def test_a_suite_file_behind_a_link_or_too_large_is_refused(tmp_path: Path) -> None:
    real = write(tmp_path, "real.yaml", "tasks:\n  - {task: a, data: d, method: ssf}\n")
    (tmp_path / "link.yaml").symlink_to(real)
    with pytest.raises(AdapterBankError, match="not a link"):
        load_suite(tmp_path / "link.yaml", {}, {})
    big = write(tmp_path, "big.yaml", "# " + "x" * (1 << 20) + "\n")
    with pytest.raises(AdapterBankError, match="larger than"):
        load_suite(big, {}, {})


def test_tasks_share_a_model_only_when_method_options_and_model_settings_agree(tmp_path: Path) -> None:
    suite = write(
        tmp_path,
        "suite.yaml",
        "tasks:\n"
        "  - {task: s1, data: d, method: ssf}\n"
        "  - {task: l1, data: d, method: lora, rank: 4}\n"
        "  - {task: s2, data: d, method: ssf, lr: 0.5, epochs: 9}\n"
        "  - {task: l2, data: d, method: lora, rank: 8}\n"
        "  - {task: s3, data: d, method: ssf, image_size: 64}\n"
        "  - {task: f1, data: d, method: full}\n"
        "  - {task: f2, data: d, method: full}\n",
    )
    groups = plan_groups(load_suite(suite, {}, {}).tasks)
    assert [[s.task for s in g] for g in groups] == [["s1", "s2"], ["l1"], ["l2"], ["s3"], ["f1"], ["f2"]]


def test_proportional_sampling_shares_the_summed_batch_by_training_set_size() -> None:
    from adapterbank.training.suite import _batch_sizes

    assert _batch_sizes("round-robin", [32, 8], [1000, 50]) == [32, 8]
    assert _batch_sizes("proportional", [32, 32], [3000, 1000]) == [48, 16]
    assert _batch_sizes("proportional", [8, 8], [100000, 10]) == [16, 1]  # every task keeps a sample per step


def test_slot_adamw_steps_each_slot_as_adamw_at_its_own_rates_and_leaves_lr_zero_slots_alone() -> None:
    torch.manual_seed(0)
    start = torch.randn(3, 4, 5)
    stacked = torch.nn.Parameter(start.clone())
    optimizer = SlotAdamW([stacked], slots=3)
    lrs, decays = torch.tensor([1e-2, 0.0, 3e-3]), torch.tensor([0.1, 0.1, 0.0])
    optimizer.set_rates(stacked, lrs, decays)
    alone = [torch.nn.Parameter(start[i].clone()) for i in range(3)]
    references = [torch.optim.AdamW([alone[i]], lr=float(lrs[i]), weight_decay=float(decays[i])) for i in (0, 2)]
    for _ in range(50):
        grad = torch.randn(3, 4, 5)
        stacked.grad = grad.clone()
        optimizer.step()
        for i, reference in zip((0, 2), references, strict=True):
            alone[i].grad = grad[i].clone()
            reference.step()
    # to the rounding of the values themselves (stepping them at lr 1 and subtracting was 20x off)
    assert torch.allclose(stacked[0], alone[0], atol=1e-7, rtol=0) and torch.allclose(
        stacked[2], alone[2], atol=1e-7, rtol=0
    )
    assert torch.equal(stacked[1], start[1])
    assert not torch.allclose(stacked[0], start[0])
    with pytest.raises(ValueError, match="stack 3 task slots"):
        SlotAdamW([torch.nn.Parameter(torch.zeros(2, 4))], slots=3)


def test_each_slot_steps_at_its_own_lr_head_lr_decay_and_schedule_and_a_finished_one_at_zero() -> None:
    from types import SimpleNamespace

    from adapterbank.training.settings import resolve
    from adapterbank.training.suite import _set_rates
    from adapterbank.training.trainer import settings_lr_factor

    first = resolve({"task": "a", "method": "ssf", "data": "d", "lr": 0.01, "head_lr": 0.1, "weight_decay": 0.5,
                     "epochs": 4, "warmup_epochs": 1, "schedule": "epoch"}, {})  # fmt: skip
    second = resolve({"task": "b", "method": "ssf", "data": "d", "lr": 0.002, "weight_decay": 0.25, "epochs": 2,
                      "warmup_epochs": 0}, {})  # fmt: skip
    third = resolve({"task": "c", "method": "ssf", "data": "d", "lr": 0.3}, {})
    tasks = [
        SimpleNamespace(settings=s, factor=settings_lr_factor(s, 10), state={"step": step}, active=active)
        for s, step, active in ((first, 13, True), (second, 7, True), (third, 5, False))
    ]
    vector, matrix, head = (torch.nn.Parameter(torch.zeros(3, *shape)) for shape in ((4,), (4, 4), (2, 4)))
    optimizer = SlotAdamW([vector, matrix, head], slots=3)
    group = SimpleNamespace(tasks=tasks, optimizer=optimizer, rates=[(vector, False, False), (matrix, False, True),
                                                                      (head, True, True)])  # fmt: skip
    _set_rates(group)
    a, b = settings_lr_factor(first, 10)(13), settings_lr_factor(second, 10)(7)
    assert a != b and 0 < a < 1 and 0 < b < 1  # two schedules, each at its own step
    expect = {
        id(vector): ([0.01 * a, 0.002 * b, 0.0], [0.0, 0.0, 0.0]),  # vectors never decay
        id(matrix): ([0.01 * a, 0.002 * b, 0.0], [0.5, 0.25, 0.0]),
        id(head): ([0.1 * a, 0.002 * b, 0.0], [0.5, 0.25, 0.0]),  # the head at head_lr where one is set
    }
    for key, (lrs, decays) in expect.items():
        assert optimizer.lrs[key].tolist() == pytest.approx(lrs) and optimizer.decays[key].tolist() == decays


def _change(record, initial: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(v) - initial[k] for k, v in record.tensors.items()}


def _initial(bank: Path, name: str, seed: int) -> dict[str, torch.Tensor]:
    """The task's values before training, drawn as its own run draws them."""
    from adapterbank.bank.torch_bridge import load_backbone
    from adapterbank.tuned import TunedModel

    opened = Bank(bank)
    record = opened.load(name, with_tensors=False)
    backbone, classes = load_backbone(opened), [len(record.class_names)]
    torch.manual_seed(seed)  # after the backbone is built, as in the trainer
    identity = opened.identity
    model = TunedModel(backbone, identity.arch, record.method, classes, record.config, identity.fingerprint)
    return model.state(0)


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data is not present")
@pytest.mark.slow
def test_suite_commits_early_resumes_after_sigkill_and_matches_separate_runs(tmp_path: Path) -> None:
    """Three tasks, two methods: the two SSF tasks train in one model (the short one commits first), LoRA after
    them in the same process. Killed after the first commit and resumed, the suite's tasks equal separate runs of
    the same settings: each task's tensors moved from their initial values by what its own run moves them, so no
    task's step touched another's slot."""
    suite = write(
        tmp_path,
        "suite.yaml",
        "defaults: {batch_size: 8, checkpoint_every: 1, epochs: 1, warmup_epochs: 0}\n"
        "tasks:\n"
        f"  - {{task: hymen-ssf, data: {HYMENOPTERA}, method: ssf, lr: 0.003, max_steps: 2}}\n"
        f"  - {{task: pneu-ssf, data: {TRAIN_DATA}, method: ssf, lr: 0.001, max_steps: 14, seed: 4}}\n"
        f"  - {{task: hymen-lora, data: {HYMENOPTERA}, method: lora, rank: 2, lr: 0.002, max_steps: 3}}\n",
    )
    # real weights: a random-init backbone's early gradients are float rounding noise, which no two batch
    # compositions compute alike
    common = ["--backbone", "tf_efficientnet_lite0", "--checkpoint", "packaged", "--image-size", "64"]
    common += ["--workers", "1", "--epochs", "1", "--warmup-epochs", "0"]  # the suite loads through one pool
    bank = tmp_path / "suite-bank"
    command = [sys.executable, "-m", "cli", "train", "--suite", str(suite), "--bank", str(bank), *common]
    victim = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while not (bank / "tasks" / "hymen-ssf.h5").exists() and victim.poll() is None:
        assert time.time() < deadline
        time.sleep(0.02)
    time.sleep(0.5)  # the commit is whole once its file is there; the group's resume point follows it
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert Bank(bank).tasks() == ["hymen-ssf"], "the suite finished (or failed) before it could be killed"
    early = Bank(bank).load("hymen-ssf")
    resumed = run_cli(*command[3:], "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    opened = Bank(bank)
    assert opened.tasks() == ["hymen-lora", "hymen-ssf", "pneu-ssf"]
    again = opened.load("hymen-ssf")
    assert again.training == early.training and all((again.tensors[k] == v).all() for k, v in early.tensors.items())
    pneu = opened.load("pneu-ssf")
    assert pneu.training["steps"] == 14 and pneu.training["suite"]["group"] == ["hymen-ssf", "pneu-ssf"]
    [row] = [line for line in resumed.stdout.splitlines() if "pneu-ssf" in line and "│" in line]
    assert row.rstrip(" │|").split()[-1].isdigit(), row  # continued from its resume point, not from scratch
    assert not any((bank / ".runs").glob("suite-*/latest"))
    before = {name: opened.load(name, with_tensors=False).training for name in opened.tasks()}
    rerun = cli_in_process(*command[3:], "--resume")  # everything is committed with these settings: nothing trains
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "training together" not in rerun.stdout
    assert {name: Bank(bank).load(name, with_tensors=False).training for name in before} == before

    separate = tmp_path / "separate-bank"
    for name, data, extra in (
        ("hymen-ssf", HYMENOPTERA, ["--method", "ssf", "--lr", "0.003", "--max-steps", "2"]),
        ("pneu-ssf", TRAIN_DATA, ["--method", "ssf", "--lr", "0.001", "--max-steps", "14", "--seed", "4"]),
        ("hymen-lora", HYMENOPTERA, ["--method", "lora", "--rank", "2", "--lr", "0.002", "--max-steps", "3"]),
    ):
        alone = cli_in_process(
            "train", "--task", name, "--data", str(data), "--bank", str(separate), "--batch-size", "8", *common, *extra
        )
        assert alone.returncode == 0, alone.stderr[-2000:]
    for name, seed in (("hymen-ssf", 0), ("pneu-ssf", 4), ("hymen-lora", 0)):
        initial = _initial(separate, name, seed)
        in_suite = _change(opened.load(name), initial)
        own = _change(Bank(separate).load(name), initial)
        # Adam's normalisation turns float-rounding differences of near-zero gradients into sign noise that grows
        # with the steps: pneu-ssf's 14 steps moved 2.0% apart on 2 threads and 4.2% on 1 (the largest tensor 4.3%
        # and 5.1%, bit for bit the same with one backward of the summed losses); another task's slot or lr is off
        # by about its whole change
        whole = torch.cat([v.flatten() for v in own.values()])
        gap = (torch.cat([in_suite[k].flatten() for k in own]) - whole).norm() / whole.norm()
        assert gap < 0.05, (name, float(gap))
        for key, moved in own.items():
            assert moved.abs().max() > 0, (name, key)  # every tensor trained
            assert (in_suite[key] - moved).norm() / moved.norm() < 0.1, (name, key)
        assert opened.load(name).metrics["n"] == Bank(separate).load(name).metrics["n"]


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--suite", "s.yaml", "--task", "t"], "--suite lists its tasks: drop --task"),
        (["--task", "t", "--method", "ssf"], "--data is required (or --suite FILE"),
        (["--suite", "missing.yaml"], "no suite file"),
    ],
)
def test_train_suite_flags_are_checked_in_one_line(args: list[str], fragment: str, tmp_path: Path) -> None:
    result = cli_in_process("train", *[os.path.join(tmp_path, a) if a.endswith(".yaml") else a for a in args])
    assert result.returncode == 2, result.stderr[-1000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and fragment in errors[0], result.stderr[-1000:]


def test_the_group_plan_is_each_tasks_own_run_from_its_position_until_its_last_step() -> None:
    from adapterbank.training.batches import epoch_batches
    from adapterbank.training.group_loader import Position, step_plan

    def own_run(size: int, batch: int, seed: int, epoch: int, skip: int, steps: int) -> list[list[int]]:
        batches = []
        while len(batches) < skip + steps:
            batches += epoch_batches(size, batch, epoch, seed)
            epoch += 1
        return batches[skip : skip + steps]

    # a: 10 images in batches of 4 (3 steps an epoch), 7 steps from the start; b: resumed at epoch 1, batch 1
    a = Position(slot=0, step=0, epoch=0, batch=0, total=7, per_epoch=3, size=10, batch_size=4, seed=3)
    b = Position(slot=1, step=4, epoch=1, batch=1, total=8, per_epoch=3, size=5, batch_size=2, seed=9)
    plan = list(step_plan([a, b], rank=0, world_size=1))
    expect_a, expect_b = own_run(10, 4, 3, 0, 0, 7), own_run(5, 2, 9, 1, 1, 4)
    assert len(plan) == 7
    for step, keys in enumerate(plan):
        want = [(0, step // 3, i) for i in expect_a[step]]
        if step < 4:
            want += [(1, 1 + (step + 1) // 3, i) for i in expect_b[step]]
        assert keys == want, step
    assert (a.step, b.step) == (0, 4)  # the plan advanced copies, not the caller's positions


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data is not present")
def test_the_group_loader_gives_each_task_its_own_runs_images_with_any_worker_count() -> None:
    from torchvision import transforms

    from adapterbank.data.images import ImageDataset
    from adapterbank.training.batches import epoch_batches
    from adapterbank.training.group_loader import Position, group_batches

    photos = sorted((HYMENOPTERA / "train").rglob("*.jpg"))
    augment = transforms.Compose([transforms.RandomResizedCrop(24), transforms.ToTensor()])
    sets = [ImageDataset([(p, i % 2) for i, p in enumerate(photos[:12])], augment, seed=1),
            ImageDataset([(p, i % 3) for i, p in enumerate(photos[12:20])], augment, seed=2)]  # fmt: skip
    positions = [Position(0, 0, 0, 0, 4, 3, 12, 4, 1), Position(1, 0, 0, 0, 3, 2, 8, 4, 2)]
    runs = {w: list(group_batches(sets, positions, w, seed=0, rank=0, world_size=1)) for w in (0, 2)}
    assert [[slot for slot, _, _ in step] for step in runs[0]] == [[0, 1], [0, 1], [0, 1], [0]]
    for one, other in zip(runs[0], runs[2], strict=True):
        for (_, images, labels), (_, images2, labels2) in zip(one, other, strict=True):
            assert torch.equal(images, images2) and torch.equal(labels, labels2)
    # what its own run's loader draws: task 0's fourth step is its epoch 1, drawn as sample(index, 1)
    [index] = epoch_batches(12, 4, 1, 1)[0][:1]
    assert torch.equal(runs[2][3][0][1][0], sets[0].sample(index, 1)[0])
