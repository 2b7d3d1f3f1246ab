"""ONNX Runtime latency of each method's merged graph against the bare backbone's graph (target <= 1.02x)."""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import timm
import torch

from adapterbank.anatomy import backbone_state
from adapterbank.backbones import create_backbone
from adapterbank.benchmarks.timing import interleaved_medians
from adapterbank.export import graph_stats, to_onnx
from adapterbank.inspection import perturb_task_parameters
from adapterbank.ort_sessions import providers, session
from adapterbank.tuned import TunedModel

BARE = "bare backbone"


@dataclass
class LatencyRow:
    batch: int
    graph: str
    median_ms: float
    ratio: float
    same_ops_as_bare: bool


def export_latency(
    arch: str = "vit_base_patch16_224",
    methods: Sequence[str] = ("snell", "ssf", "lora", "bitfit"),
    batches: Sequence[int] = (1, 32),
    rounds: int = 10,
    num_classes: int = 100,
    checkpoint: str | None = None,
) -> tuple[list[LatencyRow], str]:
    """Rows per batch and graph, and the ONNX Runtime provider used."""
    torch.manual_seed(0)
    backbone = create_backbone(arch, checkpoint=checkpoint)
    graphs: dict[str, Path] = {}
    with tempfile.TemporaryDirectory() as folder:
        example = (torch.randn(1, *backbone.pretrained_cfg["input_size"]),)
        bare = timm.create_model(arch, num_classes=num_classes).eval()
        bare.load_state_dict(backbone_state(backbone), strict=False)
        graphs[BARE] = Path(folder) / "bare.onnx"
        to_onnx(bare, example, ["images"], graphs[BARE], 18)
        for method in methods:
            tuned = TunedModel(copy.deepcopy(backbone), arch, method, [num_classes]).eval()
            perturb_task_parameters(tuned)
            graphs[method] = Path(folder) / f"{method}.onnx"
            to_onnx(tuned.merge(0), example, ["images"], graphs[method], 18)
        bare_ops = graph_stats(graphs[BARE])["ops"]
        same = {name: graph_stats(path)["ops"] == bare_ops for name, path in graphs.items()}
        sessions = {name: session(path) for name, path in graphs.items()}
        rows = []
        for batch in batches:
            feed = {"images": np.random.default_rng(batch).standard_normal((batch, *example[0].shape[1:]), np.float32)}
            runs = {name: (lambda s=s, f=feed: s.run(["logits"], f)) for name, s in sessions.items()}
            medians = interleaved_medians(runs, rounds * max(1, 8 // batch))  # short runs are noisier: more of them
            for name, seconds in medians.items():
                rows.append(LatencyRow(batch, name, seconds * 1e3, seconds / medians[BARE], same[name]))
    return rows, providers()[0]
