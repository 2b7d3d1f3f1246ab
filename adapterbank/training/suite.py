"""Many tasks in one DeepSpeed job (`adapterbank train --suite`): tasks that can share a model train together.

Tasks whose method, method options, image size, drop-path rate and EMA agree form a group: one model holds them
all in its task slots, and every step takes a batch of each of them (each task's batch through its own slot, the
gradients adding up in the slots, one optimizer step). Each task keeps what a run of its own has: its data order
and augmentation (its seed), its slot's initial values (drawn as its own run draws them), its loss (the mean over
its own samples, so its gradient is the one its own run computes), its learning rates, weight decay and schedule
(SlotAdamW), its evaluations, and its commit to the bank as soon as it finishes. Sampling decides each step's mix:

- round-robin (default): every step takes each unfinished task's own batch (`batch_size` of its settings); a
  task makes exactly the steps its own run makes, and finishes when those are done.
- proportional: every step takes the group's summed batch, shared in proportion to the tasks' training-set sizes,
  so the tasks go through their epochs side by side and the batch stays full until the end; a task's batch then
  differs from its own run's (recorded with it).

A group of one task, and every task whose method owns its backbone (full), trains as `adapterbank train` would,
in the same process. A resume point holds a whole group; on --resume, tasks the bank already holds with the same
settings are not trained again.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import hashlib
import json
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from adapterbank.backbones import adapt_input_size
from adapterbank.bank.paths import regular_file
from adapterbank.bank.store import Bank
from adapterbank.bank.torch_bridge import commit, task_record
from adapterbank.data import open_dataset
from adapterbank.data.images import ImageDataset
from adapterbank.data.layouts import Dataset
from adapterbank.errors import AdapterBankError
from adapterbank.evaluation import eval_loader, evaluate
from adapterbank.methods import get_method, make_config
from adapterbank.process import training_process
from adapterbank.training.backbone import BackboneChoice, choose_backbone, open_or_create_bank
from adapterbank.training.batches import steps_per_epoch
from adapterbank.training.devices import autocast, device_for
from adapterbank.training.distributed import ProcessInfo, barrier
from adapterbank.training.ema import TaskEma
from adapterbank.training.group_loader import Position, TaskBatch, group_batches
from adapterbank.training.objective import Objective
from adapterbank.training.resume import RunFolder, load_point, save_point
from adapterbank.training.schedule import Factor
from adapterbank.training.settings import TrainSettings
from adapterbank.training.slot_optimizer import SlotAdamW
from adapterbank.training.suite_file import Suite
from adapterbank.training.task_data import task_datasets
from adapterbank.training.trainer import (
    Reporter,
    SilentReporter,
    TrainResult,
    averaged,
    deepspeed_engine,
    fresh_state,
    settings_lr_factor,
    train_in_process,
)
from adapterbank.tuned import TunedModel


class SuiteReporter(Reporter, Protocol):
    """Progress of a suite: which tasks a group holds, each task's evaluations and commit."""

    def group(self, names: Sequence[str]) -> None: ...
    def task_evaluated(self, name: str, epoch: int, accuracy: float) -> None: ...
    def committed(self, name: str, accuracy: float) -> None: ...


class SilentSuiteReporter(SilentReporter):
    def group(self, names: Sequence[str]) -> None:
        pass

    def task_evaluated(self, name: str, epoch: int, accuracy: float) -> None:
        pass

    def committed(self, name: str, accuracy: float) -> None:
        pass


def share_key(settings: TrainSettings) -> str | None:
    """Tasks with equal keys can train in one model; None: the task trains alone (its method owns a backbone)."""
    method = get_method(settings.method)
    if not method.supports_mixed_tasks or method.trains_backbone:
        return None
    config = make_config(method, settings.options).to_dict()
    model_settings = (settings.image_size, settings.drop_path_rate, settings.ema_decay)
    return json.dumps([settings.method, config, model_settings], sort_keys=True)


def plan_groups(tasks: Sequence[TrainSettings]) -> list[list[TrainSettings]]:
    """Tasks grouped by share_key, groups in the order their first task is listed."""
    groups: dict[str, list[TrainSettings]] = {}
    for index, settings in enumerate(tasks):
        key = share_key(settings)
        groups.setdefault(key if key is not None else f"alone-{index}", []).append(settings)
    return list(groups.values())


RESOLVED = ("image_size", "augment")  # unset, they are resolved from the data and backbone: the record holds those


def committed_with(settings: TrainSettings) -> bool:
    """Whether the bank holds this task trained with these settings (a finished task of an earlier suite run).
    A record that does not read as one is not."""
    if not regular_file(Path(settings.bank) / "bank.h5"):
        return False
    bank = Bank(settings.bank)
    if settings.task not in bank.tasks():
        return False
    training = bank.load(settings.task, with_tensors=False).training
    suite = training.get("suite")
    if isinstance(suite, dict) and "batch_size" in suite:  # proportional sampling: the record holds the share
        training = {**training, "batch_size": suite["batch_size"]}
    wanted = json.loads(json.dumps(settings.resume_key()))
    return all(training.get(k) == v for k, v in wanted.items() if not (k in RESOLVED and v is None))


def run_name(group: Sequence[TrainSettings]) -> str:
    """The run folder of a group's resume points, by its tasks (a group of one: the task's own, as `train`)."""
    if len(group) == 1:
        return group[0].task
    names = "\n".join(s.task for s in group)
    return f"suite-{hashlib.sha256(names.encode()).hexdigest()[:16]}"


def _already_committed(group: list[TrainSettings]) -> set[str]:
    """On --resume without a resume point of the group: its tasks the bank holds with the same settings (a group
    that finished, or whose point was lost). With a point, the point knows which tasks finished."""
    first = group[0]
    if not first.resume:
        return set()
    if regular_file(Path(first.bank) / "bank.h5") and RunFolder(Path(first.bank), run_name(group)).has_point():
        return set()
    return {s.task for s in group if committed_with(s)}


def train_suite(suite: Suite, reporter: SuiteReporter | None = None) -> list[TrainResult]:
    """Train every task of the suite in this process; one result per task, in the suite's order."""
    reporter = reporter or SilentSuiteReporter()
    for settings in suite.tasks:
        choose_backbone(settings)  # every name, size and weights file checked before any training starts
    results: dict[str, TrainResult] = {}
    with training_process() as info:
        for group in plan_groups(suite.tasks):
            committed = _already_committed(group)
            results.update({name: _banked_result(suite, name) for name in committed})
            if len(committed) == len(group):
                continue
            choice = choose_backbone(group[0])  # again: an earlier group may have created the bank
            reporter.group([s.task for s in group if s.task not in committed])
            if len(group) == 1:
                results[group[0].task] = train_in_process(group[0], choice, info, reporter)
                reporter.committed(group[0].task, results[group[0].task].accuracy)
            else:
                results.update(_train_group(group, committed, suite.sampling, choice, info, reporter))
            gc.collect()  # the group's engine and model hold reference cycles; free them before the next group
    return [results[s.task] for s in suite.tasks]


def _banked_result(suite: Suite, name: str) -> TrainResult:
    """A task an earlier run committed, as its result (0 steps, 0 s: nothing ran now)."""
    settings = next(s for s in suite.tasks if s.task == name)
    metrics = Bank(settings.bank).load(name, with_tensors=False).metrics
    return TrainResult(name, float(metrics.get("accuracy", 0.0)), int(metrics.get("n", 0)), str(metrics.get("split")),
                       0, 0.0, 0)  # fmt: skip


@dataclass
class GroupTask:
    """One task of a group: its data, objective, schedule and position."""

    settings: TrainSettings  # batch_size is the task's share of each step
    requested_batch: int  # the batch size the suite asked for (proportional sampling shares the steps otherwise)
    slot: int
    dataset: Dataset
    train_set: ImageDataset
    eval_loader: torch.utils.data.DataLoader
    resolved: dict[str, Any]
    objective: Objective
    factor: Factor
    per_epoch: int
    total: int
    state: dict[str, Any] = field(default_factory=dict)

    @property
    def active(self) -> bool:
        return not self.state["done"]


@dataclass
class Group:
    """The parts one group's steps share."""

    tasks: list[GroupTask]
    sampling: str
    info: ProcessInfo
    reporter: SuiteReporter
    bank: Bank
    model: TunedModel
    engine: Any
    optimizer: SlotAdamW
    ema: TaskEma | None
    device: torch.device
    runs: RunFolder
    rates: list[tuple[torch.nn.Parameter, bool, bool]]  # (parameter, is the head's, decays)
    checkpoint_every: int
    workers: int  # one pool loads every task's batches (group_loader)
    started: float
    step: int = 0
    batches: Iterator[list[TaskBatch]] | None = None

    def resume_key(self) -> dict[str, Any]:
        key = {"sampling": self.sampling, "tasks": [t.settings.resume_key() for t in self.tasks]}
        return json.loads(json.dumps(key))


def _train_group(
    settings: list[TrainSettings],
    committed: set[str],
    sampling: str,
    choice: BackboneChoice,
    info: ProcessInfo,
    reporter: SuiteReporter,
) -> dict[str, TrainResult]:
    """The whole planned group (its resume points are named by it); tasks in `committed` start finished."""
    group = _set_up(settings, sampling, choice, info, reporter)
    with _locked(group) if info.is_main else contextlib.nullcontext():
        if settings[0].resume:
            _resume(group)
        for task in group.tasks:
            task.state["done"] = task.state["done"] or task.settings.task in committed
        reporter.start(max(t.total for t in group.tasks), group.step)
        group.engine.train()
        while any(t.active for t in group.tasks):
            _step(group)
        group.batches = None  # its workers end with it
        if info.is_main:
            group.runs.clear()
    barrier()
    return {t.settings.task: _result(group, t) for t in group.tasks if t.settings.task not in committed}


@contextlib.contextmanager
def _locked(group: Group) -> Iterator[None]:
    """The group's run folder and every task's own: no `train --task` of one of them runs beside the suite."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(group.runs.locked())
        for task in group.tasks:
            stack.enter_context(RunFolder(group.bank.path, task.settings.task).locked())
        yield


def _set_up(
    settings: list[TrainSettings], sampling: str, choice: BackboneChoice, info: ProcessInfo, reporter: SuiteReporter
) -> Group:
    first = settings[0]
    random.seed(first.seed)
    np.random.seed(first.seed % 2**32)
    bank, backbone = open_or_create_bank(first, choice, info)
    parts = []
    for s in settings:
        dataset = open_dataset(s.data)
        train_set, eval_set, resolved = task_datasets(dataset, s, bank)
        parts.append((s, dataset, train_set, eval_set, resolved))
    batch_sizes = _batch_sizes(sampling, [s.batch_size for s in settings], [len(p[2]) for p in parts])
    adapt_input_size(backbone, parts[0][4]["image_size"])
    model = _group_model(bank, backbone, settings, [len(p[1].class_names) for p in parts])
    tasks = []
    for slot, ((s, dataset, train_set, eval_set, resolved), batch) in enumerate(zip(parts, batch_sizes, strict=True)):
        per_epoch = steps_per_epoch(len(train_set), batch, info.world_size)
        planned = per_epoch * s.epochs + int(s.cooldown_epochs * per_epoch)
        tasks.append(
            GroupTask(
                settings=replace(s, batch_size=batch),
                requested_batch=s.batch_size,
                slot=slot,
                dataset=dataset,
                train_set=train_set,
                eval_loader=eval_loader(eval_set, s.batch_size, s.num_workers),
                resolved=resolved,
                objective=Objective(len(dataset.class_names), s.label_smoothing, s.mixup, s.cutmix),
                factor=settings_lr_factor(s, per_epoch),
                per_epoch=per_epoch,
                total=min(s.max_steps or planned, planned),
                state={**fresh_state(), "done": False, "seconds": 0.0},
            )
        )
    trainable = model.trainable_parameters()
    optimizer = SlotAdamW([p for _, p in trainable], len(tasks))
    ema = TaskEma([p for _, p in trainable], first.ema_decay) if first.ema_decay else None
    device = device_for(info)
    engine = deepspeed_engine(model.to(device), optimizer, None, sum(batch_sizes))
    head = f"{model.head_path}."
    rates = [(p, name.startswith(head), p.ndim - 1 >= 2) for name, p in trainable]
    every = [s.checkpoint_every for s in settings if s.checkpoint_every]
    return Group(
        tasks=tasks,
        sampling=sampling,
        info=info,
        reporter=reporter,
        bank=bank,
        model=model,
        engine=engine,
        optimizer=optimizer,
        ema=ema,
        device=device,
        runs=RunFolder(bank.path, run_name(settings)),
        rates=rates,
        checkpoint_every=min(every, default=0),
        workers=max(s.num_workers for s in settings),
        started=time.perf_counter(),
    )


def _batch_sizes(sampling: str, batch_sizes: list[int], sizes: list[int]) -> list[int]:
    """Each task's share of a step: its own batch (round-robin), or the summed batch shared in proportion to the
    training-set sizes (proportional; at least one sample each)."""
    if sampling == "round-robin":
        return batch_sizes
    total, samples = sum(batch_sizes), sum(sizes)
    return [max(1, round(total * n / samples)) for n in sizes]


def _group_model(
    bank: Bank, backbone: torch.nn.Module, settings: list[TrainSettings], classes: list[int]
) -> TunedModel:
    """The group's model, each slot starting where the task's own run would start (its seed, its own draw)."""
    first = settings[0]
    arch, fingerprint = bank.identity.arch, bank.identity.fingerprint
    initial = []
    for s, count in zip(settings, classes, strict=True):
        torch.manual_seed(s.seed)
        alone = TunedModel(copy.deepcopy(backbone), arch, s.method, [count], s.options, fingerprint)
        initial.append(alone.state(0))
    model = TunedModel(backbone, arch, first.method, classes, first.options, fingerprint)
    for slot, tensors in enumerate(initial):
        model.load_state(tensors, slot)
    torch.manual_seed(first.seed)
    return model


def _set_rates(group: Group) -> None:
    """Every slot's lr for this step from its task's schedule at its own step; finished tasks at 0."""
    for p, is_head, decays in group.rates:
        lrs, decay = [], []
        for task in group.tasks:
            s = task.settings
            base = (s.head_lr or s.lr) if is_head else s.lr
            lrs.append(base * task.factor(task.state["step"]) if task.active else 0.0)
            decay.append(s.weight_decay if decays and task.active else 0.0)
        group.optimizer.set_rates(p, torch.tensor(lrs, dtype=torch.float64), torch.tensor(decay, dtype=torch.float64))


def _next_batches(group: Group, active: list[GroupTask]) -> list[TaskBatch]:
    """This step's batch of every unfinished task, from the group's loader (started at the tasks' positions)."""
    if group.batches is None:
        positions = [
            Position(t.slot, t.state["step"], t.state["epoch"], t.state["batch"], t.total, t.per_epoch,
                     len(t.train_set), t.settings.batch_size, t.settings.seed)
            for t in active
        ]  # fmt: skip
        first = group.tasks[0].settings
        info = group.info
        group.batches = group_batches([t.train_set for t in group.tasks], positions, group.workers, first.seed,
                                      info.rank, info.world_size)  # fmt: skip
    batches = next(group.batches)
    if [slot for slot, _, _ in batches] != [t.slot for t in active]:
        raise RuntimeError("the group's loader fell out of step with its tasks")
    return batches


def _step(group: Group) -> None:
    """One optimizer step on every unfinished task's own batch; then each task's bookkeeping. Each task's batch
    goes through the model alone and back (its slot; BatchNorm is frozen, so the result is the mixed batch's), the
    gradients adding up in the slots, then one step: a backward per task holds one task's activations at a time and
    was the fastest of the step variants measured (docs/benchmarks.md#suite-training)."""
    tick = time.perf_counter()
    active = [t for t in group.tasks if t.active]
    _set_rates(group)
    summed, correct, labels = 0.0, 0, []
    for index, (task, (_, images, task_labels)) in enumerate(zip(active, _next_batches(group, active), strict=True)):
        inputs, task_targets = task.objective.prepare(images.to(group.device), task_labels.to(group.device))
        slots = torch.full((len(images),), task.slot, dtype=torch.long, device=group.device)
        with autocast(group.device):
            rows = group.engine(inputs, slots)[:, : group.model.num_classes[task.slot]]
        loss = task.objective.loss(rows, task_targets)  # each task's mean: its own run's gradient
        # processes average the gradients once, after the step's last backward
        with group.engine.no_sync() if index < len(active) - 1 else contextlib.nullcontext():
            group.engine.backward(loss)
        summed = summed + loss.detach()  # read once, after the step: no host sync per task
        correct += int((rows.argmax(-1).cpu() == task_labels).sum())
        labels.append(task_labels)
    group.engine.step()
    group.step += 1
    if group.ema is not None:
        group.ema.update(group.step)
    count = sum(len(x) for x in labels)
    rate = count * group.info.world_size / max(time.perf_counter() - tick, 1e-9)
    group.reporter.step(group.step, float(summed) / len(active), correct / count, rate)
    ended = False
    for task in active:
        task.state["step"] += 1
        task.state["batch"] += 1
        if task.state["step"] >= task.total or task.state["batch"] >= task.per_epoch:
            _end_epoch(group, task)
            ended = True
    if any(t.active for t in group.tasks) and (
        ended or (group.checkpoint_every and group.step % group.checkpoint_every == 0)
    ):
        _save(group)


def _end_epoch(group: Group, task: GroupTask) -> None:
    """The task's next epoch; its evaluation when due; at its last step, its commit."""
    state = task.state
    state["epoch"] += 1
    state["batch"] = 0
    last = state["step"] >= task.total
    if group.info.is_main and (last or state["epoch"] % task.settings.eval_every == 0):
        with averaged(group.ema):
            accuracy, _ = evaluate(group.model, task.eval_loader, group.device, slot=task.slot)
        state["evaluations"].append({"epoch": state["epoch"], "step": state["step"], "accuracy": accuracy})
        group.reporter.task_evaluated(task.settings.task, state["epoch"], accuracy)
    if last:
        state["seconds"] = time.perf_counter() - group.started
        if group.info.is_main:
            _commit(group, task)
        state["done"] = True


def _commit(group: Group, task: GroupTask) -> None:
    """The task into the bank as soon as it finishes (its last evaluation is at its last step)."""
    state = task.state
    with averaged(group.ema):
        accuracy, n = state["evaluations"][-1]["accuracy"], len(task.eval_loader.dataset)
        best = max(e["accuracy"] for e in state["evaluations"])
        metrics = {"accuracy": accuracy, "split": task.resolved["eval_split"], "n": n, "best_accuracy": best}
        training = {
            **asdict(task.settings),
            **task.resolved,
            "steps": state["step"],
            "seconds": round(state["seconds"], 2),
            "world_size": group.info.world_size,
            "layout": task.dataset.layout,
            "evaluations": state["evaluations"],
            "suite": {
                "sampling": group.sampling,
                "group": [t.settings.task for t in group.tasks],
                "batch_size": task.requested_batch,  # as the suite asked; `batch_size` above is what each step took
            },
        }
        record = task_record(
            group.model, task.settings.task, task.dataset.class_names, task.slot, metrics=metrics, training=training
        )
        commit(group.bank, record)
    group.reporter.committed(task.settings.task, accuracy)


def _result(group: Group, task: GroupTask) -> TrainResult:
    state = task.state
    accuracy = state["evaluations"][-1]["accuracy"] if state["evaluations"] else 0.0
    return TrainResult(
        task.settings.task,
        accuracy,
        len(task.eval_loader.dataset),
        task.resolved["eval_split"],
        state["step"],
        state["seconds"],
        state.get("resumed_from", 0),
        state["evaluations"],
    )


def _save(group: Group) -> None:
    """A resume point of the whole group (rank 0): its tensors, optimizer, EMA, RNGs and every task's position."""
    if group.info.is_main:
        payload = {"step": group.step, "tasks": {t.settings.task: t.state for t in group.tasks},
                   "settings": group.resume_key()}  # fmt: skip
        save_point(group.runs, group.step, group.model, group.optimizer, group.ema, payload)


def _resume(group: Group) -> None:
    """The newest resume point into the group: tensors, optimizer, EMA, RNGs, positions; finished tasks stay
    finished (they are in the bank)."""
    payload = load_point(group.runs, group.resume_key(), group.model, group.optimizer, group.ema)
    if payload is None:
        return
    try:
        group.step = int(payload["step"])
        for task in group.tasks:
            saved = payload["tasks"][task.settings.task]
            task.state = {k: saved[k] for k in ("step", "epoch", "batch", "evaluations", "done", "seconds")}
            task.state["resumed_from"] = task.state["step"]
    except (KeyError, TypeError, ValueError) as exc:
        raise AdapterBankError(
            f"the resume point in '{group.runs.folder}' is malformed ({exc}); rerun without --resume"
        ) from exc
