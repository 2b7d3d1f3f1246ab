"""LoRA tasks as Hugging Face PEFT folders (`adapter_config.json` + `adapter_model.safetensors`).

Our fused-qkv LoRA holds separate q, k, v factors of rank r; in PEFT form that is one rank-3r LoRA on `qkv` with
A stacked and B block-diagonal (rank_pattern/alpha_pattern keep the scale). Imports accept any plain PEFT LoRA
whose targets lie within our placements: ranks are zero-padded to the largest, each module's alpha/r is folded
into B, and a fused qkv factor is shared by the q, k and v blocks. The result is exact either way.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import regex
import timm
import torch
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from adapterbank.atomic_files import write_whole
from adapterbank.bank.store import Bank, TaskRecord
from adapterbank.errors import AdapterBankError
from adapterbank.methods.pointwise import PointwiseDelta
from adapterbank.tuned import TunedModel

PREFIX = "base_model.model."
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"


def _meta_lora(arch: str, rank: int, num_classes: int) -> TunedModel:
    with torch.device("meta"):
        return TunedModel(timm.create_model(arch), arch, "lora", [num_classes], {"rank": rank}, "meta")


def _conv_paths(model: TunedModel) -> set[str]:
    """Paths of the LoRA-wrapped 1x1 convs: PEFT stores their factors as (r, n, 1, 1) conv kernels."""
    return {p for p, m in model.model.named_modules() if isinstance(m, PointwiseDelta) and m.is_conv}


def _pointwise(weight: np.ndarray, conv: bool) -> np.ndarray:
    return weight[..., None, None] if conv else weight


def export_peft(bank: Bank, task: str, folder: str | Path) -> Path:
    """Write a LoRA task as a PEFT folder; files appear whole (temp name, then rename)."""
    record = bank.load(task)
    if record.method != "lora":
        raise AdapterBankError(f"task '{task}' is a {record.method} task; only LoRA tasks have a PEFT form")
    rank = int(record.config["rank"])
    alpha = float(record.config.get("alpha") or rank)
    meta = _meta_lora(bank.identity.arch, rank, len(record.class_names))
    convs = _conv_paths(meta)
    tensors: dict[str, np.ndarray] = {}
    rank_pattern: dict[str, int] = {}
    alpha_pattern: dict[str, float] = {}
    targets = sorted({k.rsplit(".", 1)[0] for k in record.tensors if k.endswith(".lora_A")})
    for path in targets:
        a, b = record.tensors[f"{path}.lora_A"], record.tensors[f"{path}.lora_B"]  # (S, r, n), (S, m, r)
        splits = a.shape[0]
        stacked_a = a.reshape(splits * rank, -1)
        block_b = np.zeros((splits * b.shape[1], splits * rank), dtype=np.float32)
        for s in range(splits):
            block_b[s * b.shape[1] : (s + 1) * b.shape[1], s * rank : (s + 1) * rank] = b[s]
        tensors[f"{PREFIX}{path}.lora_A.weight"] = _pointwise(stacked_a, path in convs)
        tensors[f"{PREFIX}{path}.lora_B.weight"] = _pointwise(block_b, path in convs)
        if splits > 1:
            rank_pattern[path] = splits * rank
            alpha_pattern[path] = splits * alpha
    head = meta.head_path
    tensors[f"{PREFIX}{head}.weight"] = record.tensors[f"{head}.weight"]
    tensors[f"{PREFIX}{head}.bias"] = record.tensors[f"{head}.bias"]
    config = {
        "peft_type": "LORA",
        "task_type": None,
        "base_model_name_or_path": bank.identity.arch,
        "r": rank,
        "lora_alpha": alpha,
        "lora_dropout": float(record.config.get("dropout", 0.0)),
        "target_modules": targets,
        "rank_pattern": rank_pattern,
        "alpha_pattern": alpha_pattern,
        "modules_to_save": [head],
        "bias": "none",
        "fan_in_fan_out": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "use_rslora": False,
        "use_dora": False,
    }
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        write_whole(folder / WEIGHTS_FILE, lambda tmp: save_file(tensors, str(tmp)))
        write_whole(folder / CONFIG_FILE, lambda tmp: tmp.write_text(json.dumps(config, indent=2)))
    except OSError as exc:
        raise AdapterBankError(f"cannot write PEFT folder '{folder}': {exc.strerror or exc}") from exc
    return folder


PATTERN_SECONDS = 0.2  # a PEFT pattern is a regex from an untrusted file: one that backtracks for longer is refused
PATTERN_BUDGET_SECONDS = 2.0  # and all matches of one import together


def _pattern_value(patterns: Any, path: str, default: Any, deadline: float) -> Any:
    """PEFT's rule (`get_pattern_key`): a key matches a module path that ends with it at a dot boundary, as a
    regex. Matched with the `regex` engine under a time limit, so a catastrophically backtracking key fails in
    one line instead of running for minutes."""
    if not isinstance(patterns, dict):
        raise AdapterBankError(f"rank_pattern/alpha_pattern must be a JSON object, got {type(patterns).__name__}")
    for key, value in patterns.items():
        left = deadline - time.monotonic()
        try:
            if left <= 0:
                raise TimeoutError
            if regex.match(rf"(.*\.)?({key})$", path, timeout=min(PATTERN_SECONDS, left)):
                return value
        except regex.error as exc:
            raise AdapterBankError(f"PEFT pattern '{key[:80]}' is not a valid regular expression ({exc})") from exc
        except TimeoutError as exc:
            raise AdapterBankError(f"PEFT pattern '{key[:80]}' takes too long to match (catastrophic regex)") from exc
    return default


def read_peft_folder(folder: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    config_file, weights_file = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    if not config_file.is_file() or not weights_file.is_file():
        raise AdapterBankError(f"'{folder}' is not a PEFT folder (needs {CONFIG_FILE} and {WEIGHTS_FILE})")
    try:
        config = json.loads(config_file.read_text())
        weights = load_file(str(weights_file))
    except (OSError, ValueError, UnicodeDecodeError, SafetensorError) as exc:
        raise AdapterBankError(f"cannot read PEFT folder '{folder}': {exc}") from exc
    if not isinstance(config, dict):
        raise AdapterBankError(f"'{config_file}' is not a JSON object")
    if config.get("peft_type") != "LORA":
        raise AdapterBankError(f"'{folder}' holds a {config.get('peft_type')} adapter; only LoRA imports")
    for flag in ("use_dora", "fan_in_fan_out", "lora_bias"):
        if config.get(flag):
            raise AdapterBankError(f"'{folder}' uses {flag}, which adapterbank's LoRA does not express")
    if config.get("bias", "none") != "none":
        raise AdapterBankError(f"'{folder}' trains biases (bias={config['bias']}); adapterbank's LoRA does not")
    return config, {k.removeprefix(PREFIX): v for k, v in weights.items()}


def import_peft(bank: Bank, folder: str | Path, task: str, class_names: list[str] | None = None) -> TaskRecord:
    """A TaskRecord (not yet committed) equal to the PEFT LoRA in `folder` on the bank's backbone."""
    folder = Path(folder)
    config, weights = read_peft_folder(folder)
    arch = bank.identity.arch
    deadline = time.monotonic() + PATTERN_BUDGET_SECONDS
    base = config.get("base_model_name_or_path")
    dropout = config.get("lora_dropout", 0.0)
    if base is not None and not isinstance(base, str):
        raise AdapterBankError(f"'{folder}': base_model_name_or_path must be text, got {json.dumps(base)}")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise AdapterBankError(f"'{folder}': lora_dropout must be a number in [0, 1), got {json.dumps(dropout)}")
    if base and base.split(".")[0] != arch.split(".")[0]:
        raise AdapterBankError(f"'{folder}' was made for '{base}'; this bank holds '{arch}'")
    modules = sorted({k.rsplit(".", 2)[0] for k in weights if k.endswith(".lora_A.weight")})
    ranks = {p: weights[f"{p}.lora_A.weight"].shape[0] if weights[f"{p}.lora_A.weight"].ndim else 0 for p in modules}
    rank_one = _meta_lora(arch, 1, 1)  # the layers' sizes bound every rank before anything of that rank is made
    dims = {k: tuple(v.shape) for k, v in rank_one.state(0).items()}
    for path, r in ranks.items():
        if f"{path}.lora_A" not in dims:
            raise AdapterBankError(f"'{folder}' tunes '{path}', which is not among adapterbank's LoRA placements")
        limit = min(dims[f"{path}.lora_A"][-1], dims[f"{path}.lora_B"][1])
        if not 1 <= r <= limit:
            raise AdapterBankError(f"'{folder}': LoRA rank of '{path}' is {r}, not in 1..{limit} (the layer's size)")
    rank = max(ranks.values(), default=1)
    meta_head = rank_one.head_path
    head_w, head_b = weights.get(f"{meta_head}.weight"), weights.get(f"{meta_head}.bias")
    if head_w is None or head_b is None:
        raise AdapterBankError(f"'{folder}' has no trained head '{meta_head}' (modules_to_save); a task needs one")
    classes = class_names or [str(i) for i in range(head_w.shape[0])]
    meta = _meta_lora(arch, rank, head_w.shape[0])
    expected = {k: tuple(v.shape) for k, v in meta.state(0).items()}
    tensors = {k: np.zeros(s, dtype=np.float32) for k, s in expected.items()}
    tensors[f"{meta_head}.weight"], tensors[f"{meta_head}.bias"] = head_w.astype(np.float32), head_b.astype(np.float32)
    use_rslora = bool(config.get("use_rslora"))
    for path in modules:
        if f"{path}.lora_A" not in expected:
            raise AdapterBankError(f"'{folder}' tunes '{path}', which is not among adapterbank's LoRA placements")
        r = ranks[path]
        alpha = _pattern_value(config.get("alpha_pattern") or {}, path, config.get("lora_alpha", r), deadline)
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha):
            raise AdapterBankError(f"'{folder}': LoRA alpha of '{path}' must be a number, got {json.dumps(alpha)}")
        scale = alpha / (r**0.5 if use_rslora else r)
        splits, block = expected[f"{path}.lora_A"][0], expected[f"{path}.lora_B"][1]
        fan_in = expected[f"{path}.lora_A"][-1]
        a, b = weights[f"{path}.lora_A.weight"], weights.get(f"{path}.lora_B.weight")
        if b is None or a.size != r * fan_in or b.size != splits * block * r:
            raise AdapterBankError(
                f"'{folder}': '{path}' needs lora_A of {r} x {fan_in} and lora_B of {splits * block} x {r}, got "
                f"{list(a.shape)} and {None if b is None else list(b.shape)}"
            )
        a, b = a.reshape(r, fan_in), b.reshape(splits * block, r)
        for s in range(splits):
            tensors[f"{path}.lora_A"][s, :r] = a
            tensors[f"{path}.lora_B"][s, :, :r] = b[s * block : (s + 1) * block] * scale
    return TaskRecord(
        name=task,
        method="lora",
        config={"rank": rank, "alpha": float(rank), "dropout": float(dropout)},
        tensors=tensors,
        class_names=classes,
        fingerprint=bank.identity.fingerprint,
        training={"imported_from": str(folder), "peft_version": config.get("peft_version")},
    )
