"""LoRA tasks cross to and from Hugging Face PEFT folders, checked with the real `peft` package."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import timm
import torch

peft = pytest.importorskip("peft")

from adapterbank import TunedModel, create_backbone  # noqa: E402
from adapterbank.bank.torch_bridge import commit, create_bank, load_backbone, load_tasks, task_record  # noqa: E402
from adapterbank.inspection import perturb_task_parameters  # noqa: E402
from tests.helpers import cli_in_process, images  # noqa: E402

CLASSES = 6


def timm_model_from_bank(bank) -> torch.nn.Module:
    """The plain timm model PEFT users would hold: the bank's backbone weights, a CLASSES-way head."""
    model = timm.create_model(bank.identity.arch, num_classes=CLASSES)
    model.load_state_dict(
        load_backbone(bank).state_dict()
        | {k: v for k, v in model.state_dict().items() if k.startswith(model.pretrained_cfg["classifier"])}
    )
    return model.eval()


@pytest.mark.parametrize("arch", ["vit_tiny_patch16_224", "convnext_atto"])
def test_exported_task_loads_in_peft_with_same_logits(tmp_path: Path, arch: str) -> None:
    backbone = create_backbone(arch)
    bank = create_bank(tmp_path / "bank", backbone, arch, "random-init")
    tuned = TunedModel(copy.deepcopy(backbone), arch, "lora", [CLASSES], {"rank": 4, "alpha": 8.0}).eval()
    perturb_task_parameters(tuned, std=0.05)
    commit(bank, task_record(tuned, "cars"))
    result = cli_in_process("bank", "export-peft", "cars", str(tmp_path / "peft"), "--bank", str(bank.path))
    assert result.returncode == 0, result.stderr
    model = peft.PeftModel.from_pretrained(timm_model_from_bank(bank), str(tmp_path / "peft")).eval()
    x = images(2)
    with torch.no_grad():
        assert torch.allclose(model(x), tuned(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("use_rslora", [False, True])
def test_peft_folder_imports_with_same_logits(tmp_path: Path, use_rslora: bool) -> None:
    arch = "vit_tiny_patch16_224"
    bank = create_bank(tmp_path / "bank", create_backbone(arch), arch, "random-init")
    config = peft.LoraConfig(
        r=4,
        lora_alpha=16,
        target_modules=["qkv", "fc1"],
        modules_to_save=["head"],
        rank_pattern={"blocks.0.attn.qkv": 2},
        use_rslora=use_rslora,
    )
    model = peft.get_peft_model(timm_model_from_bank(bank), config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name or "modules_to_save" in name:
                p.add_(torch.randn_like(p) * 0.05)
    model.save_pretrained(str(tmp_path / "peft"))
    x = images(2)
    with torch.no_grad():
        expected = model.eval()(x)
    result = cli_in_process(
        "bank", "import-peft", str(tmp_path / "peft"), "--task", "imported", "--bank", str(bank.path)
    )
    assert result.returncode == 0, result.stderr
    loaded, [record] = load_tasks(bank, ["imported"])
    assert record.method == "lora" and record.config["rank"] == 4
    with torch.no_grad():
        assert torch.allclose(loaded(x), expected, atol=1e-5, rtol=1e-5)


def test_refusals_are_one_line(tmp_path: Path) -> None:
    arch = "vit_tiny_patch16_224"
    backbone = create_backbone(arch)
    bank = create_bank(tmp_path / "bank", backbone, arch, "random-init")
    commit(bank, task_record(TunedModel(copy.deepcopy(backbone), arch, "ssf", [CLASSES]), "scaled"))
    result = cli_in_process("bank", "export-peft", "scaled", str(tmp_path / "out"), "--bank", str(bank.path))
    assert result.returncode == 2 and "only LoRA tasks" in result.stderr and not (tmp_path / "out").exists()
    config = peft.LoraConfig(r=2, target_modules=["proj"], modules_to_save=["head"])
    model = peft.get_peft_model(timm_model_from_bank(bank), config)
    model.save_pretrained(str(tmp_path / "peft"))
    result = cli_in_process("bank", "import-peft", str(tmp_path / "peft"), "--task", "x", "--bank", str(bank.path))
    assert result.returncode == 2 and "patch_embed.proj" in result.stderr and "placements" in result.stderr
    assert bank.tasks() == ["scaled"]
