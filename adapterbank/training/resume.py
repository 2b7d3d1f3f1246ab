"""Resume points without pickle: tensors in safetensors, everything else in JSON, under BANK/.runs/TASK.

DeepSpeed's own checkpoints are read with `torch.load(weights_only=False)`, so a crafted file under a bank folder
would run code on `train --resume`. A resume point here is two files adapterbank reads without executing anything:

    step<N>/tensors.safetensors  trainable tensors, optimizer moments, EMA, torch and CUDA RNG states
    step<N>/state.json           position (step, epoch, batch), evaluations, settings, optimizer hyper-parameters,
                                 scheduler state, Python and NumPy RNG states
    latest                       JSON naming the newest complete step folder (written last, atomically)

A run folder is locked (a POSIX lock on BANK/.runs/TASK.lock) while its training runs, so a second training of the same
task is refused instead of deleting the first one's resume points.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from adapterbank.atomic_files import fsync, publish, temporary_path, write_whole
from adapterbank.bank.paths import inside, open_nofollow, regular_file
from adapterbank.errors import AdapterBankError
from adapterbank.training.random_state import rng_state, set_rng_state

FORMAT = 1
MAX_JSON_BYTES = 64 << 20  # a run's evaluations and RNG states are a few hundred KiB
_STEP = re.compile(r"step[0-9]{1,12}")


class RunFolder:
    """BANK/.runs/TASK: resume points of one task's training."""

    def __init__(self, bank: Path, task: str) -> None:
        self.folder = inside(bank, ".runs", task, create=True)
        self.lock_file = inside(bank, ".runs") / f"{task}.lock"

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Held for the whole training; a second training of the task fails at once. A POSIX record lock, not
        flock: data-loader workers forked by the run do not inherit it, so a killed run's lingering workers never
        keep its task locked."""
        fd = open_nofollow(self.lock_file, os.O_RDWR | os.O_CREAT)
        try:
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except (BlockingIOError, PermissionError) as exc:
                raise AdapterBankError(
                    f"task '{self.folder.name}' is being trained by another process (run folder {self.folder} is "
                    f"locked); wait for it or train under another --task name"
                ) from exc
            yield
        finally:
            os.close(fd)

    def save(self, step: int, tensors: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
        """Write step<N> whole (a temporary folder renamed into place), then point `latest` at it, then drop the
        older points."""
        name = f"step{step}"
        tmp = temporary_path(self.folder / name)
        tmp.mkdir()
        try:
            save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp / "tensors.safetensors"))
            (tmp / "state.json").write_text(json.dumps({"format": FORMAT, **state}))
            for written in tmp.iterdir():
                fsync(written)
            shutil.rmtree(self.folder / name, ignore_errors=True)
            publish(tmp, self.folder / name)
            write_whole(self.folder / "latest", lambda latest: latest.write_text(json.dumps({"step": name})))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        for old in self.folder.iterdir():
            if old.name not in (name, "latest"):
                shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink(missing_ok=True)

    def has_point(self) -> bool:
        return regular_file(self.folder / "latest")

    def load(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
        """The newest resume point, or None when there is none. Nothing in it is executed: a malformed file is a
        one-line error."""
        latest = self.folder / "latest"
        if not regular_file(latest):
            return None
        name = _read_json(latest).get("step")
        if not isinstance(name, str) or not _STEP.fullmatch(name):
            raise AdapterBankError(f"'{latest}' does not name a resume point; rerun without --resume")
        point = inside(self.folder, name)
        tensors_file, state_file = point / "tensors.safetensors", point / "state.json"
        if not (regular_file(tensors_file) and regular_file(state_file)):
            raise AdapterBankError(f"resume point '{point}' is incomplete; rerun without --resume")
        state = _read_json(state_file)
        if state.get("format") != FORMAT:
            raise AdapterBankError(f"resume point '{point}' has format {state.get('format')!r}, not {FORMAT}")
        try:
            tensors = load_file(str(tensors_file))
        except (SafetensorError, OSError, ValueError) as exc:
            raise AdapterBankError(
                f"resume point '{point}': unreadable tensors ({exc}); rerun without --resume"
            ) from exc
        return tensors, state

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def _read_json(path: Path) -> dict[str, Any]:
    if path.stat().st_size > MAX_JSON_BYTES:
        raise AdapterBankError(f"'{path}' is larger than {MAX_JSON_BYTES >> 20} MiB: not a resume file")
    try:
        value = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AdapterBankError(f"'{path}' is not valid JSON ({exc}); rerun without --resume") from exc
    if not isinstance(value, dict):
        raise AdapterBankError(f"'{path}' is not a JSON object; rerun without --resume")
    return value


def optimizer_state(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A torch optimizer's state_dict split into tensors (per parameter index) and JSON."""
    full = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, values in full["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer/{index}/{key}"] = value
            else:
                scalars[f"{index}/{key}"] = value
    return tensors, {"param_groups": full["param_groups"], "scalars": scalars}


def load_optimizer_state(
    optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], state: dict[str, Any]
) -> None:
    per_param: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer/"):
            _, index, name = key.split("/", 2)
            per_param.setdefault(int(index), {})[name] = value
    for key, value in state.get("scalars", {}).items():
        index, name = key.split("/", 1)
        per_param.setdefault(int(index), {})[name] = value
    try:
        optimizer.load_state_dict({"state": per_param, "param_groups": state["param_groups"]})
    except (KeyError, ValueError, TypeError) as exc:
        raise AdapterBankError(f"the resume point's optimizer state does not fit this model ({exc})") from exc


def save_point(
    runs: RunFolder, step: int, model: Any, optimizer: torch.optim.Optimizer, ema: Any, payload: dict[str, Any]
) -> None:
    """A resume point: `model`'s trainable tensors, the optimizer's moments, the EMA's averages and every random
    generator, with `payload` (position, settings key, ...) beside them."""
    tensors = {f"model/{name}": p for name, p in model.trainable_parameters()}
    optimizer_tensors, optimizer_json = optimizer_state(optimizer)
    rng_tensors, rng_json = rng_state()
    tensors.update({**optimizer_tensors, **rng_tensors})
    if ema is not None:
        tensors.update({f"ema/{i}": t for i, t in enumerate(ema.state())})
    runs.save(step, tensors, {**payload, "optimizer": optimizer_json, "rng": rng_json})


def load_point(
    runs: RunFolder, key: dict[str, Any], model: Any, optimizer: torch.optim.Optimizer, ema: Any
) -> dict[str, Any] | None:
    """The newest resume point into the model, optimizer, EMA and random generators, when it was made with the
    settings `key`; its payload for the caller's own fields, or None when there is none."""
    point = runs.load()
    if point is None:
        return None
    tensors, payload = point
    where = runs.folder
    if payload.get("settings") != json.loads(json.dumps(key)):
        raise AdapterBankError(f"the resume point in '{where}' was made with other settings; rerun without --resume")
    trainable = dict(model.trainable_parameters())
    for name, p in trainable.items():
        value = tensors.get(f"model/{name}")
        if value is None or value.shape != p.shape:
            raise AdapterBankError(f"the resume point in '{where}' does not fit this model ('{name}')")
        with torch.no_grad():
            p.copy_(value)
    try:
        load_optimizer_state(optimizer, tensors, payload["optimizer"])
        if ema is not None:
            ema.load([tensors[f"ema/{i}"] for i in range(len(trainable))])
        set_rng_state(tensors, payload["rng"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise AdapterBankError(f"the resume point in '{where}' is malformed ({exc}); rerun without --resume") from exc
    return payload
