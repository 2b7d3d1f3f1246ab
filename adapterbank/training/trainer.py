"""The DeepSpeed training loop: engine set-up, resume, epochs (steps, evaluation, resume points), commit."""

from __future__ import annotations

import contextlib
import random
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from adapterbank.backbones import adapt_input_size
from adapterbank.bank.store import Bank
from adapterbank.bank.torch_bridge import commit, task_record
from adapterbank.data import open_dataset
from adapterbank.data.images import ImageDataset, loader_batches
from adapterbank.data.layouts import Dataset
from adapterbank.errors import AdapterBankError
from adapterbank.evaluation import eval_loader, evaluate
from adapterbank.process import training_process
from adapterbank.training.backbone import BackboneChoice, choose_backbone, open_or_create_bank
from adapterbank.training.batches import epoch_batches, steps_per_epoch
from adapterbank.training.devices import autocast, device_for
from adapterbank.training.distributed import ProcessInfo, barrier
from adapterbank.training.ema import TaskEma
from adapterbank.training.objective import Objective
from adapterbank.training.resume import RunFolder, load_point, save_point
from adapterbank.training.schedule import Factor, lr_factor
from adapterbank.training.settings import TrainSettings
from adapterbank.training.task_data import task_datasets
from adapterbank.tuned import TunedModel


class Reporter(Protocol):
    """Progress sink (the CLI draws a progress bar; the library default is silent)."""

    def start(self, total_steps: int, done: int) -> None: ...
    def step(self, done: int, loss: float, accuracy: float, images_per_second: float) -> None: ...
    def evaluated(self, epoch: int, accuracy: float) -> None: ...


class SilentReporter:
    def start(self, total_steps: int, done: int) -> None:
        pass

    def step(self, done: int, loss: float, accuracy: float, images_per_second: float) -> None:
        pass

    def evaluated(self, epoch: int, accuracy: float) -> None:
        pass


@dataclass
class TrainResult:
    task: str
    accuracy: float
    n: int
    split: str
    steps: int
    seconds: float
    resumed_from: int
    evaluations: list[dict[str, float]] = field(default_factory=list)


@dataclass
class Run:
    """The parts of one training run that its steps share."""

    settings: TrainSettings
    info: ProcessInfo
    reporter: Reporter
    bank: Bank
    dataset: Dataset
    train_set: ImageDataset
    eval_loader: torch.utils.data.DataLoader
    resolved: dict[str, Any]
    model: TunedModel
    engine: Any
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    objective: Objective
    ema: TaskEma | None
    device: torch.device
    per_epoch: int
    total: int
    runs: RunFolder


def train(settings: TrainSettings, reporter: Reporter | None = None) -> TrainResult:
    """Train one task and commit it to the bank (rank 0). Resumable after a kill with settings.resume. The process
    is a DeepSpeed job for this call only (`adapterbank.process.training_process`)."""
    choice = choose_backbone(settings)  # before DeepSpeed starts: a wrong backbone or weights file fails at once
    with training_process() as info:
        return train_in_process(settings, choice, info, reporter)


def train_in_process(
    settings: TrainSettings, choice: BackboneChoice, info: ProcessInfo, reporter: Reporter | None = None
) -> TrainResult:
    """`train` inside a training process that is already set up (a suite trains its tasks one after another in
    one)."""
    run = _set_up(settings, choice, info, reporter or SilentReporter())
    with run.runs.locked() if info.is_main else contextlib.nullcontext():  # one training per task at a time
        state = (_resume(run) if settings.resume else None) or fresh_state()
        result = _train_epochs(run, state)
        if info.is_main:
            _commit(run, state, result)
    barrier()
    return result


def fresh_state() -> dict[str, Any]:
    """A run's position (step, epoch, batch within it) and its evaluations so far: what a resume point restores."""
    return {"step": 0, "epoch": 0, "batch": 0, "evaluations": []}


def _set_up(settings: TrainSettings, choice: BackboneChoice, info: ProcessInfo, reporter: Reporter) -> Run:
    """Data, backbone (from or into the bank), the task's model, optimizer, schedule and DeepSpeed engine."""
    random.seed(settings.seed)  # Python's and NumPy's generators (timm Mixup draws from NumPy) start from --seed
    np.random.seed(settings.seed % 2**32)
    dataset = open_dataset(settings.data)
    bank, backbone = open_or_create_bank(settings, choice, info)
    train_set, eval_set, resolved = task_datasets(dataset, settings, bank)
    adapt_input_size(backbone, resolved["image_size"])
    torch.manual_seed(settings.seed)
    classes = [len(dataset.class_names)]
    model = TunedModel(
        backbone, bank.identity.arch, settings.method, classes, settings.options, bank.identity.fingerprint
    )
    per_epoch = steps_per_epoch(len(train_set), settings.batch_size, info.world_size)
    groups = model.param_groups(settings.weight_decay, settings.head_lr)
    optimizer = torch.optim.AdamW(groups, lr=settings.lr, eps=1e-8)
    scheduler = _scheduler(optimizer, settings, per_epoch)
    ema = TaskEma([p for _, p in model.trainable_parameters()], settings.ema_decay) if settings.ema_decay else None
    device = device_for(info)
    engine = deepspeed_engine(model.to(device), optimizer, scheduler, settings.batch_size)
    planned = per_epoch * settings.epochs + int(settings.cooldown_epochs * per_epoch)
    return Run(
        settings=settings,
        info=info,
        reporter=reporter,
        bank=bank,
        dataset=dataset,
        train_set=train_set,
        eval_loader=eval_loader(eval_set, settings.batch_size, settings.num_workers),
        resolved=resolved,
        model=model,
        engine=engine,
        optimizer=optimizer,
        scheduler=scheduler,
        objective=Objective(classes[0], settings.label_smoothing, settings.mixup, settings.cutmix),
        ema=ema,
        device=device,
        per_epoch=per_epoch,
        total=min(settings.max_steps or planned, planned),
        runs=RunFolder(bank.path, settings.task),
    )


def _scheduler(
    optimizer: torch.optim.Optimizer, settings: TrainSettings, per_epoch: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """Warm-up then cosine over the planned epochs, stepped per step or (as the released trainers) per epoch."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, settings_lr_factor(settings, per_epoch))


def settings_lr_factor(settings: TrainSettings, per_epoch: int) -> Factor:
    """The run's lr multiplier by step: warm-up then cosine, per step or (as the released trainers) per epoch."""
    return lr_factor(
        settings.schedule, per_epoch, settings.epochs, settings.warmup_epochs, settings.lr, settings.min_lr,
        settings.warmup_lr,
    )  # fmt: skip


def deepspeed_engine(
    model: TunedModel,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    batch_size: int,
) -> Any:
    """The DeepSpeed engine that steps the model: plain data parallelism (ZeRO stage 0), no logging of its own, and
    no gradient clipping: DeepSpeed clips to norm 1.0 unless told, the released trainers never clip, and in a suite a
    global norm would tie every task's step to the others' gradients."""
    import deepspeed  # imported by training_process, after DS_ACCELERATOR was set

    config = {
        "train_micro_batch_size_per_gpu": batch_size,
        "gradient_accumulation_steps": 1,
        "steps_per_print": 10**9,
        "zero_optimization": {"stage": 0},
        "gradient_clipping": 0.0,
        "wall_clock_breakdown": False,
    }
    engine, _, _, _ = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=scheduler, config=config, dist_init_required=False
    )
    return engine


def _train_epochs(run: Run, state: dict[str, Any]) -> TrainResult:
    """Epochs until the planned steps are done; the result's accuracy is filled in at commit."""
    resumed_from = state["step"]
    run.reporter.start(run.total, state["step"])
    started = time.perf_counter()
    run.engine.train()
    while state["step"] < run.total:
        _epoch(run, state)
    seconds = time.perf_counter() - started
    split = run.resolved["eval_split"]
    return TrainResult(run.settings.task, 0.0, 0, split, state["step"], seconds, resumed_from, state["evaluations"])


def _epoch(run: Run, state: dict[str, Any]) -> None:
    """The rest of the current epoch (all of it unless resumed mid-way), then its evaluation and resume point."""
    settings = run.settings
    tick = time.perf_counter()
    for images, labels in loader_batches(epoch_loader(run.train_set, run.settings, state, run.info)):
        loss, accuracy = _step(run, images, labels)
        state["step"] += 1
        state["batch"] += 1
        if run.ema is not None:
            run.ema.update(state["step"])
        now = time.perf_counter()
        run.reporter.step(state["step"], loss, accuracy, len(labels) * run.info.world_size / max(now - tick, 1e-9))
        tick = now
        if settings.checkpoint_every and state["step"] % settings.checkpoint_every == 0:
            _save(run, state)
        if state["step"] >= run.total:
            break
    if state["step"] >= run.total or state["batch"] >= run.per_epoch:
        _end_epoch(run, state)


def epoch_loader(
    train_set: ImageDataset, settings: TrainSettings, state: dict[str, Any], info: ProcessInfo
) -> torch.utils.data.DataLoader:
    """This rank's batches of the current epoch from the resume position on (`state`: epoch, batch)."""
    batches = epoch_batches(len(train_set), settings.batch_size, state["epoch"], settings.seed, info.rank,
                            info.world_size)[state["batch"] :]  # fmt: skip
    train_set.epoch = state["epoch"]  # augmentation draws per (seed, epoch, image): resumable, worker-proof
    # its own generator: a loader draws a seed when iterated, which must not shift the global one that dropout and
    # DropPath draw from (a resumed run would then differ from an uninterrupted one)
    generator = torch.Generator().manual_seed(settings.seed * 1_000_003 + state["epoch"])
    return torch.utils.data.DataLoader(
        train_set, batch_sampler=batches, num_workers=settings.num_workers, generator=generator
    )


def _step(run: Run, images: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """One optimizer step on a batch; its loss and batch accuracy."""
    images, labels = images.to(run.device), labels.to(run.device)
    inputs, targets = run.objective.prepare(images, labels)
    with autocast(run.device):
        logits = run.engine(inputs)
    loss = run.objective.loss(logits, targets)
    run.engine.backward(loss)
    run.engine.step()
    return loss.item(), float((logits.argmax(-1) == labels).float().mean())


def _end_epoch(run: Run, state: dict[str, Any]) -> None:
    """Move to the next epoch; evaluate (rank 0) every eval_every epochs and at the end, and save a resume point
    unless the run is done."""
    state["epoch"] += 1
    state["batch"] = 0
    last = state["step"] >= run.total
    if run.info.is_main and (last or state["epoch"] % run.settings.eval_every == 0):
        with averaged(run.ema):
            accuracy, _ = evaluate(run.model, run.eval_loader, run.device)
        state["evaluations"].append({"epoch": state["epoch"], "step": state["step"], "accuracy": accuracy})
        run.reporter.evaluated(state["epoch"], accuracy)
    if not last:
        _save(run, state)


def _commit(run: Run, state: dict[str, Any], result: TrainResult) -> None:
    """The final accuracy into the result, the task into the bank, and the run's resume points away; with an EMA,
    its weights are what is evaluated and banked."""
    with averaged(run.ema):
        result.accuracy, result.n = _final_accuracy(run, state)
        best = max((e["accuracy"] for e in state["evaluations"]), default=result.accuracy)
        metrics = {"accuracy": result.accuracy, "split": result.split, "n": result.n, "best_accuracy": best}
        training = {
            **asdict(run.settings),
            **run.resolved,
            "steps": state["step"],
            "seconds": round(result.seconds, 2),
            "world_size": run.info.world_size,
            "layout": run.dataset.layout,
            "evaluations": state["evaluations"],
        }
        record = task_record(run.model, run.settings.task, run.dataset.class_names, metrics=metrics, training=training)
        commit(run.bank, record)
    run.runs.clear()


def _final_accuracy(run: Run, state: dict[str, Any]) -> tuple[float, int]:
    """The last evaluation when it was at the last step, else a fresh one."""
    final = state["evaluations"][-1] if state["evaluations"] else None
    if final is not None and final["step"] == state["step"]:
        return final["accuracy"], len(run.eval_loader.dataset)
    return evaluate(run.model, run.eval_loader, run.device)


def averaged(ema: TaskEma | None) -> contextlib.AbstractContextManager:
    """The EMA weights in the model while inside, when training keeps an EMA."""
    return ema.swapped_in() if ema is not None else contextlib.nullcontext()


def _save(run: Run, state: dict[str, Any]) -> None:
    """A resume point (rank 0; the other ranks hold the same tensors): trainable tensors, optimizer, scheduler,
    EMA, position in the data and every RNG state, written without pickle."""
    if run.info.is_main:
        payload = {**state, "settings": run.settings.resume_key(), "scheduler": run.scheduler.state_dict()}
        save_point(run.runs, state["step"], run.model, run.optimizer, run.ema, payload)


def _resume(run: Run) -> dict[str, Any] | None:
    """Load the newest resume point into the model, optimizer, scheduler, EMA and RNGs; its position, or None."""
    payload = load_point(run.runs, run.settings.resume_key(), run.model, run.optimizer, run.ema)
    if payload is None:
        return None
    try:
        run.scheduler.load_state_dict(payload["scheduler"])
        return {k: payload[k] for k in ("step", "epoch", "batch", "evaluations")}
    except (KeyError, TypeError, ValueError) as exc:
        raise AdapterBankError(
            f"the resume point in '{run.runs.folder}' is malformed ({exc}); rerun without --resume"
        ) from exc
