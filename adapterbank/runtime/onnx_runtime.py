"""ONNX Runtime backend with the TorchRuntime interface: `predict(images, tasks)`, `reload()`.

Tasks of SSF, BitFit, LoRA, linear probes and the U-Tuning family (adapter, prefix, prompt, utuning) are served
by one multi-task graph per (method, config) group: one session, per-sample `task_id`. SNELL and full tasks get
their merged per-task graphs. Optionally, initializers found in several graphs (a SNELL task leaves norms,
embeddings and depthwise convs untouched; every multi-task graph holds the frozen backbone) are loaded once and
shared between sessions with `SessionOptions.add_initializer`. Graphs are cached outside the bank (see
`graph_cache`) and rebuilt when a task's `updated` time changes or a graph's bytes do not match its manifest.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import numpy_helper

from adapterbank.atomic_files import write_whole
from adapterbank.bank.store import Bank, TaskRecord
from adapterbank.data.preprocessing import task_preprocessing
from adapterbank.export import MULTI_TASK_METHODS, export_multi_task, export_task
from adapterbank.graph_cache import bank_graph_folder, graph_problem
from adapterbank.ort_sessions import session
from adapterbank.runtime.slots import TaskSlot, load_healthy, rows_per_group


class _Group:
    def __init__(self, sess: ort.InferenceSession, names: list[str], multi: bool) -> None:
        self.session, self.names, self.multi = sess, names, multi


class ONNXRuntime:
    def __init__(
        self, bank: str | Path | Bank, tasks: Sequence[str] | None = None, share_initializers: bool = False
    ) -> None:
        """`share_initializers`: hand initializers that several graphs hold to every session once. Off by default:
        on CPU it measured more resident memory, not less (docs/benchmarks.md#onnx-runtime-memory)."""
        self.bank = bank if isinstance(bank, Bank) else Bank(bank)
        self.only = list(tasks) if tasks is not None else None
        self.share = share_initializers
        self.cache_dir = bank_graph_folder(self.bank)
        self._shared: dict[tuple[str, str], ort.OrtValue] = {}  # (name, sha256) -> one copy for all sessions
        self.groups: list[_Group] = []
        self.tasks: dict[str, TaskSlot] = {}
        self.broken: dict[str, str] = {}  # tasks of the bank that fail to load, with the reason: never served
        self.reload()

    def _graph(self, key: str, members: list[TaskRecord], build) -> Path:
        """The cached graph of `key`, (re)built when missing, damaged or stale; its manifest records what it was
        built from."""
        path = self.cache_dir / f"{key}.onnx"
        built_from = {r.name: r.updated for r in members}
        if not path.is_file() or graph_problem(path, built_from) is not None:
            build(path.stem)
            manifest = path.with_suffix(".json")
            info = {**json.loads(manifest.read_text()), "built_from": built_from}
            write_whole(manifest, lambda tmp: tmp.write_text(json.dumps(info, indent=2)))  # others may be reading
        return path

    def _sessions(self, paths: list[Path]) -> list[ort.InferenceSession]:
        """One session per graph; an initializer found (same name, same bytes) in several graphs is loaded once and
        handed to each of them. Unique initializers stay inside their session: holding them here too would only
        add a copy."""
        if not self.share:
            return [session(path) for path in paths]
        found: list[list[tuple[str, tuple[str, str], onnx.TensorProto]]] = []
        counts: Counter[tuple[str, str]] = Counter()
        for path in paths:
            entries = []
            for init in onnx.load(str(path), load_external_data=False).graph.initializer:
                if np.prod(init.dims) < 1024:
                    continue  # small tensors are not worth sharing
                key = (init.name, hashlib.sha256(init.raw_data or init.SerializeToString()).hexdigest())
                entries.append((init.name, key, init))
            counts.update({key for _, key, _ in entries})
            found.append(entries)
        shared = {key for key, count in counts.items() if count > 1}
        self._shared = {k: v for k, v in self._shared.items() if k in shared}
        sessions = []
        for path, entries in zip(paths, found, strict=True):
            options = ort.SessionOptions()
            for name, key, init in entries:
                if key in shared:
                    if key not in self._shared:
                        array = np.ascontiguousarray(numpy_helper.to_array(init))
                        self._shared[key] = ort.OrtValue.ortvalue_from_numpy(array)
                    options.add_initializer(name, self._shared[key])
            sessions.append(session(path, options))
        return sessions

    def reload(self) -> None:
        names = self.only if self.only is not None else self.bank.tasks()
        records, self.broken = load_healthy(
            self.bank, names, explicit=self.only is not None
        )  # checksums too: graphs are built from them
        grouped: dict[str, list[TaskRecord]] = {}
        for record in records:
            if record.method in MULTI_TASK_METHODS:  # a graph has one input size: sizes group apart
                size = task_preprocessing(record.training, self.bank.identity).size
                key = json.dumps([record.method, record.config, size], sort_keys=True)
            else:
                key = "task:" + record.name
            grouped.setdefault(key, []).append(record)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        groups, tasks = [], {}
        for key, members in grouped.items():
            stamp = hashlib.sha256(json.dumps([key, [(r.name, r.updated) for r in members]]).encode()).hexdigest()[:16]
            multi = not key.startswith("task:")
            if multi:
                path = self._graph(
                    stamp,
                    members,
                    lambda stem, m=members: export_multi_task(
                        self.bank, [r.name for r in m], stem, self.cache_dir, batch=max(2, len(m))
                    ),
                )
            else:
                path = self._graph(
                    stamp, members, lambda stem, r=members[0]: export_task(self.bank, r.name, self.cache_dir, name=stem)
                )
            for slot, record in enumerate(members):
                tasks[record.name] = TaskSlot(len(groups), slot, record.class_names, record)
            groups.append((path, [r.name for r in members], multi))
        sessions = self._sessions([path for path, _, _ in groups])
        self.groups = [_Group(sess, names, multi) for sess, (_, names, multi) in zip(sessions, groups, strict=True)]
        self.tasks = tasks

    def task_names(self) -> list[str]:
        return list(self.tasks)

    def prepare(self, names: Sequence[str]) -> dict[str, str]:
        """{name: why} of the tasks of `names` this runtime cannot serve (every served task is loaded already)."""
        return {n: self.broken.get(n, f"unknown task '{n[:200]}'") for n in dict.fromkeys(names) if n not in self.tasks}

    def describe(self, name: str) -> TaskRecord:
        return self.tasks[name].record

    def predict(self, images: torch.Tensor, tasks: Sequence[str]) -> list[torch.Tensor]:
        rows_by_group = rows_per_group(images, tasks, self.tasks)
        array = images.detach().cpu().float().numpy()
        out: list[torch.Tensor | None] = [None] * len(tasks)
        for group_index, rows in rows_by_group.items():
            group = self.groups[group_index]
            feeds = {"images": array[rows]}
            if group.multi:
                feeds["task_id"] = np.array([self.tasks[tasks[r]].slot for r in rows], dtype=np.int64)
            logits = group.session.run(["logits"], feeds)[0]
            for i, row in enumerate(rows):
                classes = len(self.tasks[tasks[row]].class_names)
                out[row] = torch.from_numpy(logits[i, :classes].copy())
        return out  # type: ignore[return-value]
