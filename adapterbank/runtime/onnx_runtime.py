"""ONNX Runtime backend with the TorchRuntime interface: `predict(images, tasks)`, `reload()`.

Tasks of SSF, BitFit, LoRA, linear probes and the U-Tuning family (adapter, prefix, prompt, utuning) are served
by one multi-task graph per (method, config) group: one session, per-sample `task_id`. SNELL and full tasks get their merged per-task graphs; initializers identical
across those graphs (a SNELL task leaves norms, embeddings and heads-to-be of the backbone untouched) are loaded
once and shared between sessions with `SessionOptions.add_initializer`. Graphs are cached under BANK/.onnx and
rebuilt only when a task's `updated` time changes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import numpy_helper

from adapterbank.bank.store import Bank, TaskRecord
from adapterbank.export import MULTI_TASK_METHODS, export_multi_task, export_task
from adapterbank.ort_sessions import session
from adapterbank.runtime.slots import TaskSlot, rows_per_group


class _Group:
    def __init__(self, sess: ort.InferenceSession, names: list[str], multi: bool) -> None:
        self.session, self.names, self.multi = sess, names, multi


class ONNXRuntime:
    def __init__(self, bank: str | Path | Bank, tasks: Sequence[str] | None = None, share_initializers: bool = True):
        self.bank = bank if isinstance(bank, Bank) else Bank(bank)
        self.only = list(tasks) if tasks is not None else None
        self.share = share_initializers
        self.cache_dir = self.bank.path / ".onnx"
        self._shared: dict[tuple[str, str], ort.OrtValue] = {}  # (name, sha256) -> one copy for all sessions
        self.groups: list[_Group] = []
        self.tasks: dict[str, TaskSlot] = {}
        self.reload()

    def _graph(self, key: str, build) -> Path:
        path = self.cache_dir / f"{key}.onnx"
        if not path.is_file():
            build(path.stem)
        return path

    def _session(self, path: Path) -> ort.InferenceSession:
        if not self.share:
            return session(path)
        options = ort.SessionOptions()
        for init in onnx.load(str(path), load_external_data=False).graph.initializer:
            array = numpy_helper.to_array(init)
            if array.size < 1024:
                continue  # small tensors are not worth sharing
            key = (init.name, hashlib.sha256(array.tobytes()).hexdigest())
            if key not in self._shared:
                self._shared[key] = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array))
            options.add_initializer(init.name, self._shared[key])
        return session(path, options)

    def reload(self) -> None:
        names = self.only if self.only is not None else self.bank.tasks()
        records = [self.bank.load(n, with_tensors=False) for n in names]
        grouped: dict[str, list[TaskRecord]] = {}
        for record in records:
            if record.method in MULTI_TASK_METHODS:
                key = json.dumps([record.method, record.config], sort_keys=True)
            else:
                key = "task:" + record.name
            grouped.setdefault(key, []).append(record)
        self.cache_dir.mkdir(exist_ok=True)
        groups, tasks = [], {}
        for key, members in grouped.items():
            stamp = hashlib.sha256(json.dumps([key, [(r.name, r.updated) for r in members]]).encode()).hexdigest()[:16]
            multi = not key.startswith("task:")
            if multi:
                path = self._graph(
                    stamp,
                    lambda stem, m=members: export_multi_task(
                        self.bank, [r.name for r in m], stem, self.cache_dir, batch=max(2, len(m))
                    ),
                )
            else:
                path = self._graph(stamp, lambda stem, r=members[0]: self._export_single(r.name, stem))
            for slot, record in enumerate(members):
                tasks[record.name] = TaskSlot(len(groups), slot, record.class_names, record)
            groups.append(_Group(self._session(path), [r.name for r in members], multi))
        self.groups, self.tasks = groups, tasks

    def _export_single(self, task: str, stem: str) -> None:
        result = export_task(self.bank, task, self.cache_dir)
        result.graph.rename(self.cache_dir / f"{stem}.onnx")
        result.manifest.rename(self.cache_dir / f"{stem}.json")

    def task_names(self) -> list[str]:
        return list(self.tasks)

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
