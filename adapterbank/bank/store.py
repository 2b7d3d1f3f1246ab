"""Bank folder layout and its guarantees.

    BANK/bank.h5               backbone identity and format version
    BANK/backbone.safetensors  the frozen backbone weights, written once (a bank alone is enough to export/serve)
    BANK/tasks/NAME.h5         one file per task: method, config, fp32 tensors with sha256 each, metadata
    BANK/catalog.sqlite        one row per task, so listing reads one file (bank/catalog.py; files stay the truth)
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
import math
import os
import re
import sqlite3
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file as load_numpy_safetensors
from safetensors.numpy import save_file as save_numpy_safetensors

from adapterbank.atomic_files import TEMP_PREFIX, fsync, write_whole
from adapterbank.bank.catalog import CATALOG_FILE, TASK_COLUMNS, Catalog, CatalogUnusable, file_key, key_size, scan_keys
from adapterbank.bank.paths import inside, open_nofollow, regular_file
from adapterbank.errors import AdapterBankError
from adapterbank.method_names import METHOD_NAMES

FORMAT_VERSION = 1
_NAME = re.compile(r"[A-Za-z0-9._-]+")


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


@dataclasses.dataclass(frozen=True)
class TaskSummary:
    """What `bank ls` shows of a task, from its catalog row (or its file when the row is missing or stale)."""

    name: str
    method: str
    num_values: int
    num_classes: int
    bytes: int
    metrics: dict[str, Any]
    updated: str
    generation: int | None = None  # the catalog's generation of this row; None when read from the file
    error: str = ""  # why the task file cannot be used ("" for a healthy task)


MAX_TASK_BYTES = 16 << 30  # the largest backbone a bank is expected to hold (ViT-g is ~4 GiB in fp32)
MAX_NAME = 200  # a task's file names (NAME.h5, its temporary, its run lock) stay under the usual 255 bytes


def valid_task_name(name: str) -> bool:
    return bool(_NAME.fullmatch(name)) and not name.startswith(".") and ".." not in name and len(name) <= MAX_NAME


def check_task_name(name: str) -> None:
    if not valid_task_name(name):
        raise AdapterBankError(
            f"invalid task name '{name[:60]}{'...' if len(name) > 60 else ''}': use at most {MAX_NAME} letters, "
            f"digits, '.', '_' and '-' (no path separators, no '..', not starting with '.')"
        )


def check_shapes(record: TaskRecord, expected: Mapping[str, tuple[int, ...]]) -> None:
    """Refuse a record whose tensor names or shapes differ from what its method builds (one line, by name)."""
    for key, shape in expected.items():
        if key not in record.shapes:
            raise AdapterBankError(f"task '{record.name}': missing tensor '{key}'")
        if tuple(record.shapes[key]) != tuple(shape):
            raise AdapterBankError(
                f"task '{record.name}': tensor '{key}' has shape {tuple(record.shapes[key])}, expected {tuple(shape)}"
            )
    extra = sorted(set(record.shapes) - set(expected))
    if extra:
        raise AdapterBankError(f"task '{record.name}': unexpected tensor '{extra[0]}' for method {record.method}")


def tensor_checksum(array: np.ndarray) -> str:
    digest = hashlib.sha256(f"{array.dtype.str}|{array.shape}|".encode())
    digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class Bank:
    """A bank folder. Opening checks it exists and is readable; nothing is written until a commit."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not regular_file(self.path / "bank.h5"):
            if orphaned(self.path):
                raise AdapterBankError(
                    f"'{self.path}' holds a backbone or task files but no bank.h5 (its identity is lost): rebuild it "
                    f"with `adapterbank bank verify --repair --bank {self.path}`"
                )
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
                path.mkdir(parents=True, exist_ok=True)
                inside(path, "tasks", create=True)
            except OSError as exc:
                raise AdapterBankError(f"cannot create bank folder '{path}': {exc.strerror}") from exc
            with _locked(path):
                if not (path / "bank.h5").is_file():  # another process may have created it meanwhile
                    if orphaned(path):  # a new identity here would orphan every task in it
                        raise AdapterBankError(
                            f"'{path}' holds a backbone or task files but no bank.h5: refusing to start a new bank "
                            f"over them; rebuild it with `adapterbank bank verify --repair --bank {path}`"
                        )
                    _atomic_write(path, path / "backbone.safetensors", lambda tmp: _write_backbone(tmp, backbone))
                    _atomic_write(path, path / "bank.h5", lambda tmp: _write_identity(tmp, identity))
                    Catalog(path).rewrite([])
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
        where = f"bank '{self.path}'"
        with _open_h5(file, where) as f:
            _check_version(f, where)
            a = f.attrs
            try:
                return BackboneIdentity(
                    arch=_text(a, "arch"),
                    fingerprint=_text(a, "fingerprint"),
                    input_size=tuple(int(v) for v in _json(a, "input_size", list)),
                    mean=tuple(float(v) for v in _json(a, "mean", list)),
                    std=tuple(float(v) for v in _json(a, "std", list)),
                    interpolation=_text(a, "interpolation"),
                    crop_pct=float(a["crop_pct"]),
                    checkpoint=_text(a, "checkpoint"),
                )
            except _MALFORMED as exc:
                raise AdapterBankError(f"{where}: bank.h5 is malformed ({exc})") from exc

    def backbone_tensors(self) -> dict[str, np.ndarray]:
        file = self.path / "backbone.safetensors"
        try:
            return load_numpy_safetensors(str(file))
        except (OSError, ValueError, RuntimeError, SafetensorError) as exc:
            raise AdapterBankError(f"bank '{self.path}': cannot read backbone.safetensors ({exc})") from exc

    def task_file(self, name: str) -> Path:
        check_task_name(name)
        return inside(self.path, "tasks") / f"{name}.h5"

    def tasks(self) -> list[str]:
        """Names of the task files: regular `NAME.h5` files with a valid name (see `foreign_entries` for the rest)."""
        return sorted(self.task_keys())

    def task_keys(self) -> dict[str, str]:
        """{task: key of its file} (catalog.file_key) in one pass over tasks/: no file is opened."""
        folder = inside(self.path, "tasks")
        if not folder.is_dir():
            return {}
        return {name: key for name, key in scan_keys(folder, ".h5").items() if valid_task_name(name)}

    def summaries(self) -> list[TaskSummary]:
        """Every task file's summary, in name order: catalog rows whose file is unchanged, the file itself for the
        rest (a stale or missing row, a bank without catalog). A bad task is a summary with `error`."""
        keys = self.task_keys()
        try:
            rows = self.catalog.rows(["method", "num_values", "num_classes", "metrics", "updated", "fingerprint"])
        except CatalogUnusable:
            rows = {}
        found = []
        for name in sorted(keys):
            row = rows.get(name)
            usable = row and row["file_key"] == keys[name] and row["fingerprint"] == self.identity.fingerprint
            summary = _summary_of_row(row, self.tensor_limit()) if usable else None
            found.append(summary or self._summary_of_file(name, keys[name]))
        return found

    def _summary_of_file(self, name: str, key: str) -> TaskSummary:
        try:
            record = self.load(name, with_tensors=False)
        except AdapterBankError as exc:
            return TaskSummary(name, "BAD", 0, 0, key_size(key), {}, "", error=str(exc))
        return TaskSummary(
            name, record.method, record.num_values, len(record.class_names), key_size(key), record.metrics,
            record.updated,
        )  # fmt: skip

    def describe(self, name: str) -> TaskRecord:
        """A task without its tensors (shapes only): its catalog row while its file is unchanged, else the file."""
        key = file_key(self.task_file(name))
        if key is not None:
            try:
                row = self.catalog.rows(TASK_COLUMNS_READ, [name]).get(name)
            except CatalogUnusable:
                row = None
            if row is not None and row["file_key"] == key:
                try:
                    return self._checked_row(row)
                except _MALFORMED:
                    pass  # a damaged row: the file decides
        return self.load(name, with_tensors=False)

    def _checked_row(self, row: Mapping[str, Any]) -> TaskRecord:
        shapes = _json(row, "shapes", dict)
        declared = 0
        for key, shape in shapes.items():
            if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
                raise TypeError(f"shape of '{key}' is not a list of sizes")
            declared += math.prod(shape) * 4
        if declared > self.tensor_limit():
            raise ValueError("declared tensors exceed what any task holds")
        record = _record_from_attrs(row, {}, {k: tuple(v) for k, v in shapes.items()}, name_key="name")
        if record.name != row["name"]:
            raise ValueError("row names another task")
        self.check_belongs(record)
        return record

    @property
    def catalog(self) -> Catalog:
        return Catalog(self.path)

    def foreign_entries(self) -> list[tuple[str, str]]:
        """(entry, why) for what lies under tasks/ but is no task file: links, folders, devices, bad names."""
        found = []
        for entry in sorted(inside(self.path, "tasks").iterdir()):
            if entry.name.startswith(TEMP_PREFIX) and regular_file(entry):
                continue  # a writer's temporary file
            if entry.suffix != ".h5" or not valid_task_name(entry.stem):
                found.append((entry.name, "not a task file name (NAME.h5, NAME of letters, digits, '.', '_', '-')"))
            elif not regular_file(entry):
                found.append((entry.name, "not a regular file (a link, folder or device)"))
        return found

    def tensor_limit(self) -> int:
        """Bytes a task's tensors may declare in all: no task holds more than the whole backbone (`full` holds
        exactly it), and never more than MAX_TASK_BYTES whatever the backbone file claims. Checked before anything
        is allocated; the exact shapes are checked against the method's before tensors are read (load_healthy)."""
        try:
            backbone = os.stat(self.path / "backbone.safetensors").st_size
        except OSError:
            backbone = 0
        return min(max(backbone, 64 << 20), MAX_TASK_BYTES)

    def load(self, name: str, with_tensors: bool = True) -> TaskRecord:
        """Read and validate a task: format version, method, backbone fingerprint, every tensor's checksum."""
        file = self.task_file(name)
        if not regular_file(file):
            if file.is_symlink() or file.exists():
                raise AdapterBankError(f"task '{name}': {file} is not a regular file (a link, folder or device)")
            known = ", ".join(self.tasks()) or "none"
            raise AdapterBankError(f"no task '{name}' in bank '{self.path}' (tasks: {known})")
        where = f"task '{name}'"
        with _open_h5(file, where) as f:
            try:
                _check_version(f, where)
                record = _read_record(f, name, with_tensors, self.tensor_limit())
            except _MALFORMED as exc:
                first = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
                raise AdapterBankError(f"{where}: file is incomplete or malformed ({first})") from exc
        self.check_belongs(record)
        return record

    def check_belongs(self, record: TaskRecord) -> None:
        """A known method, trained on this bank's backbone."""
        where = f"task '{record.name}'"
        if record.method not in METHOD_NAMES:
            raise AdapterBankError(f"{where}: unknown method '{record.method}' (known: {', '.join(METHOD_NAMES)})")
        if record.fingerprint != self.identity.fingerprint:
            raise AdapterBankError(
                f"{where} was trained on another backbone (fingerprint {record.fingerprint[:12]}, "
                f"bank {self.identity.fingerprint[:12]})"
            )

    # ---- writing --------------------------------------------------------------------------------------------

    def check(self, record: TaskRecord) -> TaskRecord:
        """Refuse a record the bank must not hold; returns it with fp32 tensors. Nothing is written."""
        check_task_name(record.name)
        self.check_belongs(record)
        where = f"task '{record.name}'"
        tensors = {}
        for key, value in record.tensors.items():
            array = np.asarray(value, dtype=np.float32)
            if "/" in key or not key:
                raise AdapterBankError(f"{where}: invalid tensor name '{key}'")
            if not np.isfinite(array).all():
                raise AdapterBankError(f"{where}: tensor '{key}' has NaN or infinite values: not committed")
            tensors[key] = array
        return dataclasses.replace(record, tensors=tensors, shapes={})  # shapes taken from the fp32 tensors

    def commit(self, record: TaskRecord, expected_shapes: Mapping[str, tuple[int, ...]]) -> TaskRecord:
        """Atomically add or replace a task whose tensors have exactly `expected_shapes` (what its method builds on
        this backbone: `torch_bridge.commit` computes them); returns the record as stored (with times)."""
        stored = self.check(record)
        check_shapes(stored, expected_shapes)
        file = self.task_file(record.name)
        with _locked(self.path):
            previous = self._created_time(file)
            stored.updated = _now()
            stored.created = previous or stored.updated
            _atomic_write(self.path, file, lambda tmp: _write_record(tmp, stored))
            self._catalog_change(lambda catalog: catalog.put(_row_of(stored, file_key(file) or "")))
        return stored

    def remove(self, name: str) -> None:
        file = self.task_file(name)
        with _locked(self.path):
            if not file.is_file():
                raise AdapterBankError(f"no task '{name}' in bank '{self.path}'")
            file.unlink()
            fsync(file.parent)
            self._catalog_change(lambda catalog: catalog.drop(name))

    def _catalog_change(self, change: Callable[[Catalog], object]) -> None:
        """Apply one change to the catalog (the lock held, the task file already published); a missing or unusable
        catalog is rebuilt from the task files first (once: a bank made before catalogs pays for it on its first
        commit)."""
        try:
            change(self.catalog)
        except CatalogUnusable:
            try:
                self._rewrite_catalog()
            except AdapterBankError as exc:  # the task file is stored: the commit stands, listing reads the files
                warnings.warn(f"{exc}; `bank verify --repair` rebuilds it", stacklevel=3)

    def catalog_disagreements(self, healthy: Sequence[TaskRecord]) -> list[str]:
        """How the catalog differs from the task files (`healthy`: the records that passed every check): a missing,
        stale or wrong row, a row of a task that has no file, or an unusable catalog. [] when it is exact."""
        keys = self.task_keys()
        try:
            rows = self.catalog.rows(TASK_COLUMNS)
        except CatalogUnusable as exc:
            return [f"unusable ({exc})"]
        found = []
        for record in healthy:
            row = rows.get(record.name)
            expected = _row_of(record, keys.get(record.name, ""))
            if row is None:
                found.append(f"no row for task '{record.name}'")
            else:
                wrong = [column for column, value in expected.items() if not _same_value(column, row[column], value)]
                if wrong:
                    found.append(f"the row of task '{record.name}' disagrees with its file ({wrong[0]})")
        found += [f"a row for task '{name}', which has no file" for name in sorted(set(rows) - set(keys))]
        return found

    def rewrite_catalog(self) -> int:
        """Rebuild the catalog from the task files (`bank verify --repair`); returns the number of rows."""
        with _locked(self.path):
            return self._rewrite_catalog()

    def _rewrite_catalog(self) -> int:
        rows = []
        for name, key in sorted(self.task_keys().items()):
            try:
                rows.append(_row_of(self.load(name, with_tensors=False), key))
            except AdapterBankError:
                continue  # a bad task gets no row: listing reads its file and shows why
        try:
            self.catalog.rewrite(rows)
        except (OSError, sqlite3.Error) as exc:
            raise AdapterBankError(f"cannot write the catalog of bank '{self.path}': {exc}") from exc
        return len(rows)

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


def restore_identity(path: Path, identity: BackboneIdentity) -> None:
    """Write a lost bank.h5 (by `bank verify --repair`, once the backbone file proved to be this identity's)."""
    with _locked(path):
        _atomic_write(path, path / "bank.h5", lambda tmp: _write_identity(tmp, identity))


def task_fingerprints(path: Path) -> dict[str, str]:
    """{task: backbone fingerprint} read straight from the task files of a folder (readable ones only)."""
    found = {}
    for file in sorted(inside(path, "tasks").glob("*.h5")):
        if not (regular_file(file) and valid_task_name(file.stem)):
            continue
        try:
            with h5py.File(file, "r") as f:
                found[file.stem] = _text(f.attrs, "fingerprint")
        except _MALFORMED:
            continue
    return found


def orphaned(path: Path) -> bool:
    """A folder with a backbone file or task files but no bank.h5: a bank whose identity file was lost."""
    tasks = path / "tasks"
    return (path / "backbone.safetensors").exists() or (tasks.is_dir() and any(tasks.glob("*.h5")))


def _sweep_own_temporaries(bank: Path) -> None:
    """Remove what bank writers that died left half-written: the bank's own files only (an export or a predict may
    be writing its own temporaries beside them); anything else there is reported by verify."""
    tasks = inside(bank, "tasks", create=True)
    for pattern, folder in ((f"{TEMP_PREFIX}bank.h5-*", bank), (f"{TEMP_PREFIX}backbone.safetensors-*", bank),
                            (f"{TEMP_PREFIX}{CATALOG_FILE}-*", bank), (f"{TEMP_PREFIX}*.h5-*", tasks)):  # fmt: skip
        for stale in folder.glob(pattern):
            if regular_file(stale):
                stale.unlink(missing_ok=True)


@contextlib.contextmanager
def _locked(bank: Path) -> Iterator[None]:
    """Exclusive writer lock; stale temp files of writers that died are removed while it is held."""
    fd = open_nofollow(inside(bank) / ".lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        _sweep_own_temporaries(bank)
        yield
    finally:
        os.close(fd)


def _atomic_write(bank: Path, target: Path, write: Callable[[Path], object]) -> None:
    """`target` appears whole or not at all (atomic_files); call with the bank lock held."""
    try:
        write_whole(target, write)
    except OSError as exc:
        raise AdapterBankError(f"cannot write to bank '{bank}': {exc.strerror or exc}") from exc


@contextlib.contextmanager
def _open_h5(file: Path, where: str) -> Iterator[h5py.File]:
    try:
        f = h5py.File(file, "r")
    except OSError as exc:
        raise AdapterBankError(f"{where}: {file.name} is not a readable HDF5 file (truncated or corrupt)") from exc
    with f:
        yield f


def _check_version(f: h5py.File, where: str) -> None:
    version = f.attrs.get("format_version", -1)
    if not isinstance(version, (int, np.integer)):
        raise AdapterBankError(
            f"{where}: format_version is a {type(version).__name__}, not an integer: not a bank file"
        )
    version = int(version)
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


# What reading a crafted or damaged HDF5 file can raise (h5py maps HDF5 errors onto these): all mean "malformed".
_MALFORMED = (KeyError, ValueError, TypeError, AttributeError, OSError, RuntimeError, json.JSONDecodeError)


def _text(attrs: Mapping[str, Any], key: str) -> str:
    value = attrs[key]
    if isinstance(value, bytes):
        value = value.decode()
    if not isinstance(value, str):
        raise TypeError(f"attribute '{key}' is a {type(value).__name__}, not text")
    return value


def _json(attrs: Mapping[str, Any], key: str, kind: type) -> Any:
    value = json.loads(_text(attrs, key))
    if not isinstance(value, kind):
        raise TypeError(f"attribute '{key}' holds a {type(value).__name__}, not a {kind.__name__}")
    return value


def _read_record(f: h5py.File, name: str, with_tensors: bool, limit: int) -> TaskRecord:
    """Every attribute type-checked and every tensor's declared size bounded by `limit` bytes before it is read."""
    a = f.attrs
    group = f["tensors"]
    if not isinstance(group, h5py.Group):
        raise TypeError("'tensors' is not a group")
    count = a["num_tensors"]
    if not isinstance(count, (int, np.integer)) or len(group) != int(count):
        raise ValueError(f"{len(group)} tensors stored, {count!r} expected")
    tensors: dict[str, np.ndarray] = {}
    shapes = {}
    declared = 0
    for key in group:
        if not isinstance(group.get(key, getlink=True), h5py.HardLink):  # soft/external links lead elsewhere
            raise TypeError(f"tensor '{key}' is a link, not data stored in this file")
        dataset = group[key]
        if not isinstance(dataset, h5py.Dataset) or dataset.dtype != np.float32:
            raise TypeError(f"tensor '{key}' is not a float32 dataset")
        if dataset.external or dataset.is_virtual:
            raise TypeError(f"tensor '{key}' keeps its data in other files")
        declared += math.prod(dataset.shape) * 4
        if declared > limit:
            raise ValueError(f"tensors up to '{key}' declare {declared:,} bytes, more than any task holds")
        shapes[key] = dataset.shape
        if with_tensors:
            array = dataset[()]
            if tensor_checksum(array) != _text(dataset.attrs, "sha256"):
                raise AdapterBankError(f"task '{name}': tensor '{key}' fails its checksum (file corrupted)")
            if not np.isfinite(array).all():
                raise AdapterBankError(f"task '{name}': tensor '{key}' has NaN or infinite values")
            tensors[key] = array
    record = _record_from_attrs(a, tensors, shapes)
    if record.name != name:
        raise AdapterBankError(f"task '{name}': file holds task '{record.name}' (renamed by hand?)")
    return record


def _record_from_attrs(
    a: Mapping[str, Any], tensors: dict[str, np.ndarray], shapes: dict, name_key: str = "task"
) -> TaskRecord:
    """A task's attributes (of its file, or its catalog row), every one type-checked."""
    class_names = _json(a, "class_names", list)
    if not all(isinstance(c, str) for c in class_names):
        raise TypeError("class names are not all text")
    return TaskRecord(
        name=_text(a, name_key),
        method=_text(a, "method"),
        config=_json(a, "config", dict),
        tensors=tensors,
        class_names=class_names,
        fingerprint=_text(a, "fingerprint"),
        metrics=_json(a, "metrics", dict),
        training=_json(a, "training", dict),
        created=_text(a, "created"),
        updated=_text(a, "updated"),
        shapes=shapes,
    )


TASK_COLUMNS_READ = ("method", "config", "class_names", "shapes", "metrics", "training", "created", "updated",
                     "fingerprint")  # fmt: skip


def _row_of(record: TaskRecord, key: str) -> dict[str, Any]:
    """The catalog row of a stored record whose file has `key`."""
    return {
        "name": record.name,
        "method": record.method,
        "config": json.dumps(record.config),
        "class_names": json.dumps(record.class_names),
        "num_classes": len(record.class_names),
        "shapes": json.dumps({k: list(v) for k, v in record.shapes.items()}),
        "num_values": record.num_values,
        "metrics": json.dumps(record.metrics),
        "training": json.dumps(record.training),
        "created": record.created,
        "updated": record.updated,
        "fingerprint": record.fingerprint,
        "file_key": key,
    }


def _same_value(column: str, stored: Any, expected: Any) -> bool:
    """JSON columns compare as data (the file lists tensors in its own order)."""
    if column in _JSON_COLUMNS and isinstance(stored, str):
        try:
            return json.loads(stored) == json.loads(expected)
        except json.JSONDecodeError:
            return False
    return stored == expected


_JSON_COLUMNS = ("config", "class_names", "shapes", "metrics", "training")


def _summary_of_row(row: Mapping[str, Any], limit: int) -> TaskSummary | None:
    """A row's summary, its values type-checked; None for a damaged row (the file is read instead)."""
    try:
        method, updated = _text(row, "method"), _text(row, "updated")
        values, classes, generation = row["num_values"], row["num_classes"], row["generation"]
        if not all(isinstance(v, int) and v >= 0 for v in (values, classes, generation)) or values * 4 > limit:
            return None
        if method not in METHOD_NAMES:
            return None
        return TaskSummary(
            row["name"], method, values, classes, key_size(row["file_key"]), _json(row, "metrics", dict), updated,
            generation,
        )  # fmt: skip
    except _MALFORMED:
        return None
