"""ONNX Runtime backend with the TorchRuntime interface: `predict(images, tasks)`, `prepare`, `reload()`.

Tasks are read on first request, as in TorchRuntime (resident.ResidentRuntime: an LRU under a byte budget).
Tasks of SSF, BitFit, LoRA, linear probes and the U-Tuning family (adapter, prefix, prompt, utuning) are served by
one stacked graph per (method, config, image size): every task tensor is a graph input, stacked along a task axis,
so loading a task writes its tensors into numpy stacks (slots.SlotTable) and no graph is exported per task; the
stacks are fed whole with each batch (ONNX Runtime reads CPU inputs in place) with a per-sample `task_id`. SNELL
and full tasks get their merged per-task graphs. Optionally, large initializers are loaded once into a pool and
handed to every session holding the same one (a SNELL task leaves norms, embeddings and depthwise convs untouched)
with `SessionOptions.add_initializer`. Graphs are cached outside the bank (see `graph_cache`): a stacked graph is built
once per kind, a per-task graph again when its task's `updated` time changes; a graph whose bytes do not match its
manifest is rebuilt.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import numpy_helper

from adapterbank.atomic_files import write_whole
from adapterbank.bank.store import Bank, TaskRecord
from adapterbank.export import MULTI_TASK_METHODS, export_stacked, export_task, stacked_graph_name
from adapterbank.graph_cache import bank_graph_folder, graph_problem
from adapterbank.ort_sessions import session
from adapterbank.runtime.resident import ResidentRuntime
from adapterbank.runtime.slots import SlotTable


class StackedGroup:
    """Resident tasks of one kind: one session of the stacked graph and the numpy stacks fed to it."""

    def __init__(self, sess: ort.InferenceSession, manifest: dict, record: TaskRecord) -> None:
        self.session = sess
        self.inputs: dict[str, str] = manifest["stacks"]  # graph input -> tensor key (or the head's valid mask)
        self.head = manifest["head"] + "."
        self.valid_key = self.head + "valid"
        self.stacks: dict[str, np.ndarray] = {}
        for key in self.inputs.values():
            if key == self.valid_key:
                self.stacks[key] = np.zeros((1, 1), dtype=bool)
            else:
                self.stacks[key] = np.zeros((1, *record.shapes[key]), dtype=np.float32)
        self.table = SlotTable(self._resize)
        self.table.width = len(record.class_names)
        self._resize([], 1, len(record.class_names))

    def _resize(self, keep: Sequence[int], capacity: int, width: int) -> None:
        for key, old in self.stacks.items():
            shape = list(old.shape)
            shape[0] = capacity
            if key.startswith(self.head):
                shape[1] = width  # narrowing drops padding only (SlotTable passes the widest held task's)
            new = np.zeros(shape, dtype=old.dtype)
            common = tuple(slice(0, min(a, b)) for a, b in zip(old.shape[1:], shape[1:], strict=True))
            new[(slice(0, len(keep)), *common)] = old[list(keep)][(slice(None), *common)]
            self.stacks[key] = new

    def add(self, record: TaskRecord) -> int:
        classes = len(record.class_names)
        slot = self.table.add(record.name, classes)
        for key, stack in self.stacks.items():
            if key == self.valid_key:
                stack[slot] = np.arange(stack.shape[1]) < classes
            else:
                stack[slot] = 0.0
                stack[(slot, *(slice(0, d) for d in record.tensors[key].shape))] = record.tensors[key]
        return sum(s.nbytes for s in self.stacks.values()) // len(self.table.owners)

    def held_bytes(self) -> int:
        return sum(stack.nbytes for stack in self.stacks.values())

    def run(self, images: np.ndarray, slots: list[int]) -> np.ndarray:
        feeds = {"images": images, "task_id": np.asarray(slots, dtype=np.int64)}
        feeds |= {name: self.stacks[key] for name, key in self.inputs.items()}
        return self.session.run(["logits"], feeds)[0]


class TaskGraph:
    """One task with a merged graph of its own (SNELL, full)."""

    def __init__(self, sess: ort.InferenceSession, name: str, size: int) -> None:
        self.session = sess
        self.size = size  # the graph's bytes: its initializers are what the session holds
        self.table = SlotTable(lambda keep, capacity, width: None)
        self.table.add(name, 1)

    def held_bytes(self) -> int:
        return self.size

    def run(self, images: np.ndarray, slots: list[int]) -> np.ndarray:
        return self.session.run(["logits"], {"images": images})[0]


class ONNXRuntime(ResidentRuntime[StackedGroup | TaskGraph]):
    def __init__(
        self,
        bank: str | Path | Bank,
        tasks: Sequence[str] | None = None,
        share_initializers: bool = False,
        task_cache_bytes: int | None = None,
        preload: Sequence[str] = (),
    ) -> None:
        """`share_initializers`: large initializers from one pool shared by every session. Off by default:
        on CPU it measured more resident memory, not less (docs/benchmarks.md#onnx-runtime-memory). The other
        arguments are TorchRuntime's."""
        super().__init__(bank if isinstance(bank, Bank) else Bank(bank), tasks, task_cache_bytes, preload)
        self.share = share_initializers
        self.cache_dir = bank_graph_folder(self.bank)
        self._shared: dict[tuple[str, str], tuple[ort.OrtValue, int]] = {}  # (name, sha256) -> (value, users)
        self._held: dict[int, list[tuple[str, str]]] = {}  # id(session) -> the shared initializers it uses
        self._start(tasks, preload)

    def _graph(self, name: str, built_from: dict[str, str], build: Callable[[str], object]) -> Path:
        """The cached graph `name`, (re)built when missing, damaged or stale; its manifest records what it was
        built from."""
        path = self.cache_dir / f"{name}.onnx"
        if not path.is_file() or graph_problem(path, built_from) is not None:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            build(name)
            manifest = path.with_suffix(".json")
            info = {**json.loads(manifest.read_text()), "built_from": built_from}
            write_whole(manifest, lambda tmp: tmp.write_text(json.dumps(info, indent=2)))  # others may be reading
        return path

    def _place(self, record: TaskRecord) -> tuple[StackedGroup | TaskGraph, int]:
        if record.method not in MULTI_TASK_METHODS:
            stamp = hashlib.sha256(json.dumps([record.name, record.updated]).encode()).hexdigest()[:16]
            path = self._graph(
                f"task-{stamp}",
                {record.name: record.updated},
                lambda name: export_task(self.bank, record.name, self.cache_dir, name=name),
            )
            group = TaskGraph(self._session(path), record.name, path.stat().st_size)
            self.groups["task:" + record.name] = group
            return group, path.stat().st_size
        name = stacked_graph_name(self.bank, record)
        if name not in self.groups:
            path = self._graph(name, {}, lambda _: export_stacked(self.bank, record, self.cache_dir))
            manifest = json.loads(path.with_suffix(".json").read_text())
            self.groups[name] = StackedGroup(self._session(path), manifest, record)
        group = self.groups[name]
        return group, group.add(record)

    def _evict(self, name: str, task) -> None:
        super()._evict(name, task)
        if not task.placement.table.slots:
            self._release(task.placement.session)

    def _run(self, group: StackedGroup | TaskGraph, images: torch.Tensor, slots: list[int]) -> torch.Tensor:
        return torch.from_numpy(group.run(images.detach().cpu().float().numpy(), slots))

    def _session(self, path: Path) -> ort.InferenceSession:
        """A session of `path`; with `share_initializers`, its large initializers come from one pool shared by
        every session (counted by users, released with the last one)."""
        if not self.share:
            return session(path)
        options, used = ort.SessionOptions(), []
        for init in onnx.load(str(path), load_external_data=False).graph.initializer:
            if np.prod(init.dims) < 1024:
                continue  # small tensors are not worth sharing
            key = (init.name, hashlib.sha256(init.raw_data or init.SerializeToString()).hexdigest())
            value, users = self._shared.get(key) or (
                ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(numpy_helper.to_array(init))),
                0,
            )
            self._shared[key] = (value, users + 1)
            options.add_initializer(init.name, value)
            used.append(key)
        sess = session(path, options)
        self._held[id(sess)] = used
        return sess

    def _release(self, sess: ort.InferenceSession) -> None:
        for key in self._held.pop(id(sess), []):
            value, users = self._shared[key]
            if users > 1:
                self._shared[key] = (value, users - 1)
            else:
                del self._shared[key]
