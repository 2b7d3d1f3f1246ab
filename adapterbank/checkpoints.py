"""Local checkpoint loading for the formats users bring, always without unpickling arbitrary objects.

Formats: Google ViT `.npz`; MAE `.pth` ('model'); MoCo v3 `.pth.tar` ('state_dict', 'module.' prefix, linear head);
official Swin and ConvNeXt `.pth`; plain timm `.pth`/`.safetensors`; EfficientNet-Lite0 in the lukemelas naming;
DINOv2 in Hugging Face naming (`.safetensors`, `.bin`, a Hub model folder, or an ONNX graph's initializers).
Layout conversions are timm's own `checkpoint_filter_fn`; only the lukemelas and Hugging Face DINOv2 renamings are
ours (timm has neither).
"""

from __future__ import annotations

import pickle
import re
import sys
import zipfile
from pathlib import Path

import torch
from safetensors.torch import load_file as load_safetensors
from torch import nn

from adapterbank.anatomy import backbone_state, classifier_path, is_head_key
from adapterbank.errors import AdapterBankError
from adapterbank.hf_dinov2 import hf_dinov2_to_original, is_hf_dinov2, read_onnx_dinov2

_CONTAINER_KEYS = ("model", "state_dict", "module", "model_state", "model_state_dict")
_MAX_LISTED = 3
_HUB_FILES = ("model.safetensors", "pytorch_model.bin")  # what a Hugging Face model folder holds


def load_checkpoint(model: nn.Module, path: str | Path) -> None:
    """Load backbone weights from `path` into `model`; the checkpoint's classifier is never used."""
    path = _weights_file(Path(path))
    if path.suffix.lower() == ".npz":
        _load_google_npz(model, path)
        return
    state = read_onnx_dinov2(path) if path.suffix.lower() == ".onnx" else _read_state_dict(path)
    state = _to_timm_names(state, model)
    head = classifier_path(model)
    state = {k: v for k, v in state.items() if not is_head_key(k, head) and not k.endswith("num_batches_tracked")}
    _check_fits(state, model, path)
    model.load_state_dict(state, strict=False)


def _weights_file(path: Path) -> Path:
    """A file as given; a Hugging Face model folder -> its weights file."""
    if path.is_dir():
        found = next((path / name for name in _HUB_FILES if (path / name).is_file()), None)
        if found is None:
            sharded = (
                " (sharded weights are not read: merge them into one file)" if any(path.glob("*.index.json")) else ""
            )
            raise AdapterBankError(f"folder '{path}' holds neither {' nor '.join(_HUB_FILES)}{sharded}")
        return found
    if not path.is_file():
        raise AdapterBankError(f"checkpoint '{path}' does not exist")
    return path


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix.lower() == ".safetensors":
        return load_safetensors(str(path))
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, zipfile.BadZipFile, EOFError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise AdapterBankError(
            f"cannot read checkpoint '{path}' as plain tensors (weights_only load refused: {first_line[:160]})"
        ) from exc
    while isinstance(raw, dict):
        inner = next((raw[k] for k in _CONTAINER_KEYS if isinstance(raw.get(k), dict)), None)
        if inner is None:
            break
        raw = inner
    if not isinstance(raw, dict) or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise AdapterBankError(f"checkpoint '{path}' holds no state dict of tensors")
    return {k.removeprefix("module."): v for k, v in raw.items()}


def _to_timm_names(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    if "_conv_stem.weight" in state:
        state = rename_lukemelas_efficientnet(state, model)
    elif is_hf_dinov2(state):
        state = hf_dinov2_to_original(state)
    module = sys.modules.get(type(model).__module__)
    filter_fn = getattr(module, "checkpoint_filter_fn", None)
    return filter_fn(state, model) if filter_fn is not None else state


def _check_fits(state: dict[str, torch.Tensor], model: nn.Module, path: Path) -> None:
    expected = backbone_state(model)
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [
        f"{k} {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    problems = []
    for label, keys in (("shape mismatch", wrong), ("missing", missing), ("unexpected", unexpected)):
        if keys:
            more = f" (+{len(keys) - _MAX_LISTED} more)" if len(keys) > _MAX_LISTED else ""
            problems.append(f"{label}: {', '.join(keys[:_MAX_LISTED])}{more}")
    if problems:
        arch = getattr(model, "pretrained_cfg", {}).get("architecture", type(model).__name__)
        raise AdapterBankError(f"checkpoint '{path}' does not fit {arch}: {'; '.join(problems)}")


def _load_google_npz(model: nn.Module, path: Path) -> None:
    if not hasattr(model, "load_pretrained") or not hasattr(model, "blocks"):
        raise AdapterBankError(f"'{path}' is a Google ViT .npz checkpoint; the backbone is a {type(model).__name__}")
    head = model.get_submodule(classifier_path(model))
    saved_head = {k: v.clone() for k, v in head.state_dict().items()}
    try:
        with torch.no_grad():
            model.load_pretrained(str(path))
    except (KeyError, RuntimeError, ValueError) as exc:
        detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise AdapterBankError(f"checkpoint '{path}' does not fit {type(model).__name__}: {detail}") from exc
    head.load_state_dict(saved_head)


def rename_lukemelas_efficientnet(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """lukemelas/EfficientNet-PyTorch names -> timm `efficientnet` names; stage sizes are read off the model."""
    if not hasattr(model, "blocks") or not hasattr(model, "conv_stem"):
        raise AdapterBankError(f"an EfficientNet (lukemelas) checkpoint does not fit {type(model).__name__}")
    flat_to_timm = [f"blocks.{i}.{j}" for i, stage in enumerate(model.blocks) for j in range(len(stage))]
    top = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
    plain = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
    expanded = {
        "_expand_conv": "conv_pw",
        "_bn0": "bn1",
        "_depthwise_conv": "conv_dw",
        "_bn1": "bn2",
        "_project_conv": "conv_pwl",
        "_bn2": "bn3",
        "_se_reduce": "se.conv_reduce",
        "_se_expand": "se.conv_expand",
    }
    out = {}
    for key, value in state.items():
        match = re.match(r"_blocks\.(\d+)\.(\w+)\.(.+)", key)
        if match is None:
            module, rest = key.split(".", 1)
            out[f"{top.get(module, module)}.{rest}"] = value
            continue
        index, module, rest = int(match[1]), match[2], match[3]
        if index >= len(flat_to_timm):
            raise AdapterBankError(f"EfficientNet checkpoint has block {index}; the model has {len(flat_to_timm)}")
        names = expanded if f"_blocks.{index}._expand_conv.weight" in state else plain
        out[f"{flat_to_timm[index]}.{names.get(module, module)}.{rest}"] = value
    return out
