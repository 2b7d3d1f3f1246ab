"""The PyTorch runtime: one batch mixing tasks of every method equals each sample alone on its merged model."""

from __future__ import annotations

import copy
import platform
import subprocess
import sys

import pytest
import torch

from adapterbank import AdapterBankError, TunedModel, create_backbone
from adapterbank.bank.store import Bank
from adapterbank.bank.torch_bridge import commit, create_bank, load_tasks, task_record
from adapterbank.inspection import perturb_task_parameters
from adapterbank.methods.snell import KernelSparseDelta
from adapterbank.runtime import TorchRuntime
from tests.helpers import REPO, assert_close_relative, images

ARCH = "convnext_atto"  # exports fastest of the four families
TASKS = {
    "s1": ("snell", 4),
    "s2": ("snell", 3),
    "f1": ("ssf", 5),
    "f2": ("ssf", 2),
    "l1": ("lora", 3),
    "a1": ("adapter", 4),
    "b1": ("bitfit", 4),
    "p1": ("linear", 6),
    "u1": ("full", 3),
}


@pytest.fixture(scope="module")
def bank(tmp_path_factory) -> Bank:
    torch.manual_seed(11)
    backbone = create_backbone(ARCH)
    bank = create_bank(tmp_path_factory.mktemp("rt") / "bank", backbone, ARCH, "random-init")
    for i, (name, (method, classes)) in enumerate(TASKS.items()):
        model = TunedModel(copy.deepcopy(backbone), ARCH, method, [classes]).eval()
        perturb_task_parameters(model, std=0.05, seed=100 + i)
        commit(bank, task_record(model, name))
    return bank


def merged_alone(bank: Bank, name: str, x: torch.Tensor) -> torch.Tensor:
    """The task alone: merged when its method merges, else its own single-task model."""
    model, _ = load_tasks(bank, [name])
    with torch.no_grad():
        return model.merge(0)(x) if model.method.mergeable else model(x)


def test_mixed_batch_of_every_method(bank: Bank) -> None:
    runtime = TorchRuntime(bank)
    order = ["f1", "s1", "u1", "l1", "a1", "f2", "p1", "s2", "b1", "f1", "s1"]
    x = images(len(order), seed=4)
    out = runtime.predict(x, order)
    for row, name in enumerate(order):
        assert out[row].shape == (TASKS[name][1],)
        assert_close_relative(out[row][None], merged_alone(bank, name, x[row : row + 1]))
    permutation = torch.randperm(len(order))
    shuffled = runtime.predict(x[permutation], [order[i] for i in permutation])
    for new, old in enumerate(permutation.tolist()):
        assert torch.allclose(shuffled[new], out[old], atol=1e-5, rtol=1e-5)


def test_tasks_with_many_rows_run_through_cached_merged_models(bank: Bank) -> None:
    """dLoRA's switch: a group whose batch holds >= MERGED_MIN_ROWS rows per task runs each task's rows through its
    merged model (cached, sharing the untouched layers), with the answers of the mixed forward."""
    from adapterbank.runtime.torch_runtime import MERGED_MIN_ROWS

    order = [name for name in ("f1", "f2", "l1", "s1", "b1", "p1") for _ in range(MERGED_MIN_ROWS)]
    x = images(len(order), seed=14)
    runtime = TorchRuntime(bank)
    out = runtime.predict(x, order)
    merged = {key[2] for key in runtime.cache._entries if isinstance(key, tuple) and key[0] == "merged"}
    assert merged == {"f1", "f2", "l1", "s1", "b1"}  # the linear probe's mixed forward is already the whole model
    mixed = TorchRuntime(bank, snell_cache_bytes=0).predict(x, order)  # no room: the mixed forward
    for row, name in enumerate(order):
        assert out[row].shape == (TASKS[name][1],)
        assert_close_relative(out[row][None], mixed[row][None])
        if row % MERGED_MIN_ROWS == 0:
            assert_close_relative(out[row][None], merged_alone(bank, name, x[row : row + 1]))
    again = runtime.predict(x, order)  # served from the cache
    assert all(torch.equal(a, b) for a, b in zip(again, out, strict=True))


def test_renumbered_slots_never_serve_another_tasks_cached_weights(bank: Bank) -> None:
    """Compaction moves a task to another slot in new stacks (version counters restart): SNELL's merged-weight
    cache must not hand it the weights cached for the task that held that slot before."""
    runtime = TorchRuntime(bank)
    x = images(1, seed=15)
    runtime.predict(x, ["s1"])  # s1 in slot 0, its merged weights cached
    runtime.predict(x, ["s2"])  # the group grows: s2 in slot 1
    runtime.resident.drop("s1")
    runtime.prepare([])  # compacted: s2 is now slot 0 of new stacks
    [group] = [g for g in runtime.groups.values() if g.model.method.name == "snell"]
    assert group.slots == {"s2": 0}
    assert_close_relative(runtime.predict(x, ["s2"])[0][None], merged_alone(bank, "s2", x))


def test_backbone_weights_are_shared_not_copied(bank: Bank) -> None:
    runtime = TorchRuntime(bank, preload=list(TASKS))
    shared = runtime.backbone.stages[1].blocks[0].mlp.fc2.weight.data_ptr()
    peft_groups = [g.model for g in runtime.groups.values() if g.model.method.name != "full"]
    assert len(peft_groups) >= 4
    for group in peft_groups:
        pointers = {p.data_ptr() for p in group.model.parameters() if not p.requires_grad}
        assert shared in pointers


def test_snell_serves_cached_merged_weights_exactly(bank: Bank) -> None:
    runtime = TorchRuntime(bank, tasks=["s1", "s2"])
    x = images(3, seed=6)
    order = ["s1", "s2", "s1"]
    first = runtime.predict(x, order)
    for row, name in enumerate(order):
        assert_close_relative(first[row][None], merged_alone(bank, name, x[row : row + 1]))
    [group] = runtime.groups.values()
    deltas = [m for m in group.model.modules() if isinstance(m, KernelSparseDelta)]
    per_task = sum(m.base.weight.nbytes for m in deltas)
    assert runtime.cache.bytes == 2 * per_task  # one merged weight per tuned layer and task, nothing else
    misses = runtime.cache.misses
    second = runtime.predict(x, order)
    assert runtime.cache.hits > 0 and runtime.cache.misses == misses
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    with torch.no_grad():  # an in-place change to a task's tensors invalidates its merged weights
        deltas[0].snell_A[0].mul_(2.0)
    runtime.predict(x[:1], ["s1"])
    assert runtime.cache.misses == misses + 1
    one_task = TorchRuntime(bank, tasks=["s1", "s2"], snell_cache_bytes=per_task)  # room for half of the batch
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(one_task.predict(x, order), first, strict=True))
    assert one_task.cache.bytes <= per_task and one_task.cache.hits == 0
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(one_task.predict(x, order), first, strict=True))
    assert one_task.cache.hits > 0  # what fits stays; the rest is merged again
    uncached = TorchRuntime(bank, tasks=["s1"], snell_cache_bytes=0)
    assert torch.allclose(uncached.predict(x[:1], ["s1"])[0], first[0], atol=1e-6) and uncached.cache.bytes == 0


def test_new_tasks_serve_at_once_and_reload_sees_replaced_and_removed_ones(bank: Bank) -> None:
    runtime = TorchRuntime(bank, preload=["f1"])
    assert "late" not in runtime.task_names()
    late = TunedModel(create_backbone(ARCH), ARCH, "ssf", [2], backbone_fingerprint=bank.identity.fingerprint)
    state = load_tasks(bank, ["f1"])[0].state(0)  # f1's SSF tensors with a new two-class head
    head = {"head.fc.weight": torch.randn(2, state["head.fc.weight"].shape[1]), "head.fc.bias": torch.zeros(2)}
    late.load_state({**state, **head})
    commit(bank, task_record(late, "late"))
    x = images(2, seed=8)
    first = runtime.predict(x, ["late", "f1"])  # read on its first request: no reload needed
    assert_close_relative(first[0][None], merged_alone(bank, "late", x[:1]))
    late.load_state(
        {"head.fc.weight": torch.randn(2, state["head.fc.weight"].shape[1])}
        | {k: v for k, v in late.state(0).items() if k != "head.fc.weight"}
    )
    commit(bank, task_record(late, "late"))  # replaced while resident: served as read until reload()
    assert_close_relative(runtime.predict(x[:1], ["late"])[0], first[0])  # one task alone: its slot, not gathers
    runtime.reload()
    replaced = runtime.predict(x[:1], ["late"])[0]
    assert not torch.allclose(replaced, first[0]) and torch.allclose(replaced[None], merged_alone(bank, "late", x[:1]))
    bank.remove("late")
    runtime.reload()
    assert "late" not in runtime.task_names() and "late" not in runtime.resident.tasks
    with pytest.raises(AdapterBankError, match="unknown task 'late'"):
        runtime.predict(x[:1], ["late"])
    assert_close_relative(runtime.predict(x[1:], ["f1"])[0][None], merged_alone(bank, "f1", x[1:]))


@pytest.mark.slow
def test_onnx_runtime_mixed_batch_of_every_method(bank: Bank) -> None:
    from adapterbank.runtime import ONNXRuntime
    from adapterbank.runtime.onnx_runtime import StackedGroup

    runtime = ONNXRuntime(bank, preload=list(TASKS))
    stacked = [g for g in runtime.groups.values() if isinstance(g, StackedGroup)]
    assert len(stacked) == 5  # ssf, lora, adapter, bitfit, linear: one stacked graph each
    order = ["f1", "s1", "u1", "l1", "a1", "f2", "p1", "s2", "b1"]
    x = images(len(order), seed=5)
    out = runtime.predict(x, order)
    for row, name in enumerate(order):
        expected = merged_alone(bank, name, x[row : row + 1])[0]
        assert (out[row] - expected).abs().max() <= 1e-4
    shared = ONNXRuntime(bank, share_initializers=True).predict(x, order)  # same graphs, initializers handed over
    assert all(torch.equal(a, b) for a, b in zip(shared, out, strict=True))
    cached = {p.name: p.stat().st_mtime_ns for p in runtime.cache_dir.glob("*.onnx")}
    assert cached and not (bank.path / ".onnx").exists()  # graphs live in the user's cache, never in the bank
    runtime.reload()  # nothing changed: no graph is rebuilt
    assert {p.name: p.stat().st_mtime_ns for p in runtime.cache_dir.glob("*.onnx")} == cached


KEEPING_FREED_MEMORY = """
import sys

import torch

from adapterbank.bank.store import Bank
from adapterbank.process import kept_heap
from adapterbank.runtime import TorchRuntime
from tests.helpers import images

runtime = TorchRuntime(Bank(sys.argv[1]), tasks=["f1", "l1"])
x = images(2, seed=9)
before = runtime.predict(x, ["f1", "l1"])
with kept_heap() as kept:
    assert kept is True
    after = runtime.predict(x, ["f1", "l1"])
assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_keeping_freed_memory_leaves_results_unchanged(bank: Bank) -> None:
    """The CLI's allocator setting (glibc mallopt) takes on this Linux and changes no number. In a process of its
    own: it cannot be undone, and the tests after this one run on the default allocator."""
    result = subprocess.run(
        [sys.executable, "-c", KEEPING_FREED_MEMORY, str(bank.path)], capture_output=True, text=True, cwd=REPO
    )
    assert result.returncode == 0, result.stderr[-2000:]


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@needs_cuda
def test_torch_runtime_on_cuda_matches_cpu(bank: Bank, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # fp32 convolutions, as on the CPU
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    order = ["f1", "s1", "u1", "l1", "a1", "f2", "p1", "s2", "b1"]
    x = images(len(order), seed=12)
    on_cpu = TorchRuntime(bank).predict(x, order)
    on_gpu = TorchRuntime(bank, device="cuda").predict(x, order)
    for gpu_row, cpu_row in zip(on_gpu, on_cpu, strict=True):
        assert gpu_row.device.type == "cpu"
        assert_close_relative(gpu_row[None], cpu_row[None], tol=1e-4)


@needs_cuda
def test_onnx_runtime_uses_cuda_when_torch_sees_a_gpu(bank: Bank) -> None:
    from adapterbank.runtime import ONNXRuntime

    runtime = ONNXRuntime(bank, tasks=["f1", "s1"])
    assert all(g.session.get_providers()[0] == "CUDAExecutionProvider" for g in runtime.groups.values())
    x = images(2, seed=13)
    answers = runtime.predict(x, ["f1", "s1"])
    for row, name in enumerate(["f1", "s1"]):
        expected = merged_alone(bank, name, x[row : row + 1])
        assert_close_relative(answers[row][None], expected, tol=1e-2)  # ORT's CUDA convolutions may use TF32
