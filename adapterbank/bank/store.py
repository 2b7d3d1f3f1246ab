"""Bank folder layout and its guarantees.

    BANK/bank.h5               backbone identity and format version
    BANK/backbone.safetensors  the frozen backbone weights, written once (a bank alone is enough to export/serve)
    BANK/tasks/NAME.h5         one file per task: method, config, fp32 tensors with sha256 each, metadata
    BANK/.lock                 flock held by every writer

A commit writes a new file under the lock, fsyncs it, `os.replace`s it over the old one and fsyncs the folder:
a process killed at any instant leaves the previous version of every task intact, and readers (who take no
lock) see either the old or the new file, never half of one. Committing a task rewrites only that task.
HDF5's own file locking is left to h5py's defaults; set HDF5_USE_FILE_LOCKING=FALSE on filesystems without it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import re
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from safetensors.numpy import load_file as load_numpy_safetensors
from safetensors.numpy import save_file as save_numpy_safetensors

from adapterbank.errors import AdapterBankError
from adapterbank.method_names import METHOD_NAMES

FORMAT_VERSION = 1
_NAME = re.compile(r"[A-Za-z0-9._-]+")
_TEMP_PREFIX = ".tmp-"


@dataclasses.dataclass(frozen=True)
class BackboneIdentity:
    arch: str
    fingerprint: str
    input_size: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str
    crop_pct: float
    checkpoint: str  # where the weights came from: a file name, 'packaged', 'timm-pretrained' or 'random-init'


@dataclasses.dataclass
class TaskRecord:
    """Everything a task owns. `tensors` are fp32 numpy arrays keyed by their place in the model."""

    name: str
    method: str
    config: dict[str, Any]
    tensors: dict[str, np.ndarray]
    class_names: list[str]
    fingerprint: str
    metrics: dict[str, Any] = dataclasses.field(default_factory=dict)
    training: dict[str, Any] = dataclasses.field(default_factory=dict)
    created: str = ""
    updated: str = ""
    shapes: dict[str, tuple[int, ...]] = dataclasses.field(default_factory=dict)  # filled even without tensors

    def __post_init__(self) -> None:
        if not self.shapes:
            self.shapes = {k: tuple(np.shape(v)) for k, v in self.tensors.items()}

    @property
    def num_values(self) -> int:
        return int(sum(np.prod(s, dtype=np.int64) for s in self.shapes.values()))


def check_task_name(name: str) -> None:
    if not _NAME.fullmatch(name) or name.startswith(".") or ".." in name:
        raise AdapterBankError(
            f"invalid task name '{name}': use letters, digits, '.', '_' and '-' "
            f"(no path separators, no '..', not starting with '.')"
        )


def tensor_checksum(array: np.ndarray) -> str:
    digest = hashlib.sha256(f"{array.dtype.str}|{array.shape}|".encode())
    digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _fsync(path: Path) -> None:
    """Flush a file's data, or a folder's entries, to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Bank:
    """A bank folder. Opening checks it exists and is readable; nothing is written until a commit."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not (self.path / "bank.h5").is_file():
            raise AdapterBankError(f"no bank at '{self.path}' (missing bank.h5); train a task into it first")
        self.identity = self._read_identity()

    # ---- creation -------------------------------------------------------------------------------------------

    @classmethod
    def create(cls, path: str | Path, identity: BackboneIdentity, backbone: dict[str, np.ndarray]) -> Bank:
        """Create a bank for one backbone, or open the existing one if it holds the same backbone."""
        path = Path(path)
        if not (path / "bank.h5").is_file():
            if path.exists() and not path.is_dir():
                raise AdapterBankError(f"bank path '{path}' exists and is not a folder")
            try:
                (path / "tasks").mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise AdapterBankError(f"cannot create bank folder '{path}': {exc.strerror}") from exc
            with _locked(path):
                if not (path / "bank.h5").is_file():  # another process may have created it meanwhile
                    _atomic_write(path, path / "backbone.safetensors", lambda tmp: _write_backbone(tmp, backbone))
                    _atomic_write(path, path / "bank.h5", lambda tmp: _write_identity(tmp, identity))
        bank = cls(path)
        if bank.identity.fingerprint != identity.fingerprint:
            raise AdapterBankError(
                f"bank '{path}' holds backbone {bank.identity.arch} ({bank.identity.fingerprint[:12]}), "
                f"not {identity.arch} ({identity.fingerprint[:12]}); use another --bank"
            )
        return bank

    # ---- reading --------------------------------------------------------------------------------------------

    def _read_identity(self) -> BackboneIdentity:
        file = self.path / "bank.h5"
        with _open_h5(file, f"bank '{self.path}'") as f:
            _check_version(f, f"bank '{self.path}'")
            a = f.attrs
            return BackboneIdentity(
                arch=str(a["arch"]),
                fingerprint=str(a["fingerprint"]),
                input_size=tuple(int(v) for v in json.loads(a["input_size"])),
                mean=tuple(float(v) for v in json.loads(a["mean"])),
                std=tuple(float(v) for v in json.loads(a["std"])),
                interpolation=str(a["interpolation"]),
                crop_pct=float(a["crop_pct"]),
                checkpoint=str(a["checkpoint"]),
            )

    def backbone_tensors(self) -> dict[str, np.ndarray]:
        file = self.path / "backbone.safetensors"
        try:
            return load_numpy_safetensors(str(file))
        except (OSError, ValueError, RuntimeError) as exc:
            raise AdapterBankError(f"bank '{self.path}': cannot read backbone.safetensors ({exc})") from exc

    def task_file(self, name: str) -> Path:
        check_task_name(name)
        return self.path / "tasks" / f"{name}.h5"

    def tasks(self) -> list[str]:
        folder = self.path / "tasks"
        return sorted(p.stem for p in folder.glob("*.h5") if not p.name.startswith("."))

    def has(self, name: str) -> bool:
        return self.task_file(name).is_file()

    def load(self, name: str, with_tensors: bool = True) -> TaskRecord:
        """Read and validate a task: format version, method, backbone fingerprint, every tensor's checksum."""
        file = self.task_file(name)
        if not file.is_file():
            known = ", ".join(self.tasks()) or "none"
            raise AdapterBankError(f"no task '{name}' in bank '{self.path}' (tasks: {known})")
        where = f"task '{name}'"
        with _open_h5(file, where) as f:
            _check_version(f, where)
            try:
                record = _read_record(f, name, with_tensors)
            except (KeyError, ValueError, TypeError) as exc:
                raise AdapterBankError(f"{where}: file is incomplete or malformed ({exc})") from exc
        self._check_belongs(record)
        return record

    def _check_belongs(self, record: TaskRecord) -> None:
        """A known method, trained on this bank's backbone."""
        where = f"task '{record.name}'"
        if record.method not in METHOD_NAMES:
            raise AdapterBankError(f"{where}: unknown method '{record.method}' (known: {', '.join(METHOD_NAMES)})")
        if record.fingerprint != self.identity.fingerprint:
            raise AdapterBankError(
                f"{where} was trained on another backbone (fingerprint {record.fingerprint[:12]}, "
                f"bank {self.identity.fingerprint[:12]})"
            )

    def verify(self) -> list[tuple[str, str]]:
        """(task, problem) for every task that fails to load or to match its checksums; empty when all is well."""
        problems = []
        for name in self.tasks():
            try:
                self.load(name)
            except AdapterBankError as exc:
                problems.append((name, str(exc)))
        return problems

    # ---- writing --------------------------------------------------------------------------------------------

    def check(self, record: TaskRecord) -> TaskRecord:
        """Refuse a record the bank must not hold; returns it with fp32 tensors. Nothing is written."""
        check_task_name(record.name)
        self._check_belongs(record)
        where = f"task '{record.name}'"
        tensors = {}
        for key, value in record.tensors.items():
            array = np.asarray(value, dtype=np.float32)
            if "/" in key or not key:
                raise AdapterBankError(f"{where}: invalid tensor name '{key}'")
            if not np.isfinite(array).all():
                raise AdapterBankError(f"{where}: tensor '{key}' has NaN or infinite values: not committed")
            tensors[key] = array
        return dataclasses.replace(record, tensors=tensors, shapes={})

    def commit(self, record: TaskRecord) -> TaskRecord:
        """Atomically add or replace a task; returns the record as stored (with times)."""
        stored = self.check(record)
        file = self.task_file(record.name)
        with _locked(self.path):
            previous = self._created_time(file)
            stored.updated = _now()
            stored.created = previous or stored.updated
            _atomic_write(self.path, file, lambda tmp: _write_record(tmp, stored))
        return stored

    def remove(self, name: str) -> None:
        file = self.task_file(name)
        with _locked(self.path):
            if not file.is_file():
                raise AdapterBankError(f"no task '{name}' in bank '{self.path}'")
            file.unlink()
            _fsync(file.parent)

    @staticmethod
    def _created_time(file: Path) -> str:
        if not file.is_file():
            return ""
        try:
            with h5py.File(file, "r") as f:
                return str(f.attrs.get("created", ""))
        except OSError:
            return ""  # a corrupt old version is replaced whole


# ---- file helpers ----------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _locked(bank: Path) -> Iterator[None]:
    """Exclusive writer lock; stale temp files of writers that died are removed while it is held."""
    try:
        handle = open(bank / ".lock", "a+")  # noqa: SIM115 - the lock lives as long as the with-block
    except OSError as exc:
        raise AdapterBankError(f"cannot lock bank '{bank}': {exc.strerror}") from exc
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
        for folder in (bank, bank / "tasks"):
            for stale in folder.glob(_TEMP_PREFIX + "*"):
                stale.unlink(missing_ok=True)
        yield
    finally:
        handle.close()


def _atomic_write(bank: Path, target: Path, write) -> None:
    """write(tmp) then fsync, rename over `target`, fsync the folder. Call with the bank lock held."""
    tmp = target.parent / f"{_TEMP_PREFIX}{target.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        write(tmp)
        _fsync(tmp)
        os.replace(tmp, target)
        _fsync(target.parent)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise AdapterBankError(f"cannot write to bank '{bank}': {exc.strerror or exc}") from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def _open_h5(file: Path, where: str) -> Iterator[h5py.File]:
    try:
        f = h5py.File(file, "r")
    except OSError as exc:
        raise AdapterBankError(f"{where}: {file.name} is not a readable HDF5 file (truncated or corrupt)") from exc
    with f:
        yield f


def _check_version(f: h5py.File, where: str) -> None:
    version = int(f.attrs.get("format_version", -1))
    if version > FORMAT_VERSION:
        raise AdapterBankError(
            f"{where} was written by a newer adapterbank (format {version}; this version reads up to "
            f"{FORMAT_VERSION}): upgrade adapterbank"
        )
    if version < 1:
        raise AdapterBankError(f"{where}: no adapterbank format version: not a bank file")


def _write_identity(tmp: Path, identity: BackboneIdentity) -> None:
    with h5py.File(tmp, "w") as f:
        f.attrs["format_version"] = FORMAT_VERSION
        for field in dataclasses.fields(identity):
            value = getattr(identity, field.name)
            f.attrs[field.name] = json.dumps(list(value)) if isinstance(value, tuple) else value


def _write_backbone(tmp: Path, tensors: dict[str, np.ndarray]) -> None:
    save_numpy_safetensors({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(tmp))


def _write_record(tmp: Path, record: TaskRecord) -> None:
    with h5py.File(tmp, "w") as f:
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["task"] = record.name
        f.attrs["method"] = record.method
        f.attrs["fingerprint"] = record.fingerprint
        f.attrs["created"] = record.created
        f.attrs["updated"] = record.updated
        for field in ("config", "class_names", "metrics", "training"):
            f.attrs[field] = json.dumps(getattr(record, field))
        group = f.create_group("tensors")
        for key, array in record.tensors.items():
            dataset = group.create_dataset(key, data=array)
            dataset.attrs["sha256"] = tensor_checksum(array)
        f.attrs["num_tensors"] = len(record.tensors)


def _read_record(f: h5py.File, name: str, with_tensors: bool) -> TaskRecord:
    a = f.attrs
    group = f["tensors"]
    if len(group) != int(a["num_tensors"]):
        raise AdapterBankError(f"task '{name}': {len(group)} tensors stored, {int(a['num_tensors'])} expected")
    tensors: dict[str, np.ndarray] = {}
    shapes = {}
    for key, dataset in group.items():
        shapes[key] = dataset.shape
        if with_tensors:
            array = dataset[()]
            if tensor_checksum(array) != dataset.attrs["sha256"]:
                raise AdapterBankError(f"task '{name}': tensor '{key}' fails its checksum (file corrupted)")
            tensors[key] = array
    record = TaskRecord(
        name=str(a["task"]),
        method=str(a["method"]),
        config=json.loads(a["config"]),
        tensors=tensors,
        class_names=json.loads(a["class_names"]),
        fingerprint=str(a["fingerprint"]),
        metrics=json.loads(a["metrics"]),
        training=json.loads(a["training"]),
        created=str(a["created"]),
        updated=str(a["updated"]),
        shapes=shapes,
    )
    if record.name != name:
        raise AdapterBankError(f"task '{name}': file holds task '{record.name}' (renamed by hand?)")
    return record
