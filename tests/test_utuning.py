"""U-Tuning family: parallel adapter, prefix, prompt (VPT-deep) and utuning (docs/methods.md#utuning).

Counts against the formulas, the parallel form of the prefix against our concatenated keys and values, the prompt's
keys-and-values form against a VPT-deep token sequence, mixed batches, the bank, ONNX export and serving.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from adapterbank import AdapterBankError, TunedModel, create_backbone, tune
from adapterbank.bank.torch_bridge import commit, create_bank, load_tasks, task_record
from adapterbank.export import export_multi_task, export_task, graph_stats
from adapterbank.inspection import perturb_task_parameters
from adapterbank.ort_sessions import session
from adapterbank.runtime import TorchRuntime
from tests.helpers import assert_close_relative, images

VIT = "vit_tiny_patch16_224"
SWIN = "swin_tiny_patch4_window7_224"
TOKEN_METHODS = ["adapter", "prefix", "prompt", "utuning"]


def vit_base_count(prefix: int = 0, prompt: int = 0, adapter: int = 0) -> int:
    width, blocks = 768, 12
    per_block = 2 * prefix * width + prompt * width + (2 * width * adapter + adapter + width if adapter else 0)
    return blocks * per_block


@pytest.mark.parametrize(
    ("method", "options", "expected"),
    [
        ("adapter", {}, vit_base_count(adapter=8)),
        ("adapter", {"dim": 32}, vit_base_count(adapter=32)),
        ("prefix", {}, vit_base_count(prefix=10)),
        ("prompt", {"length": 50}, vit_base_count(prompt=50)),
        ("utuning", {}, vit_base_count(prefix=8, prompt=8, adapter=8)),
        ("utuning", {"prefix_length": 0, "prompt_length": 4}, vit_base_count(prompt=4, adapter=8)),
    ],
)
def test_parameter_counts_on_vit_base(method: str, options: dict, expected: int) -> None:
    model = tune("vit_base_patch16_224", method, 100, **options)
    assert model.num_trainable(include_head=False) == expected
    assert model.num_trainable() == expected + 768 * 100 + 100


def test_utuning_default_is_near_the_reported_size() -> None:
    assert abs(vit_base_count(prefix=8, prompt=8, adapter=8) / 0.36e6 - 1) < 0.06  # the V-PETL benchmark: 0.36M


def test_only_tuner_tensors_and_head_train() -> None:
    model = tune(VIT, "utuning", 10)
    trainable = {name for name, _ in model.trainable_parameters()}
    assert trainable == set(model.state(0))
    assert {"blocks.0.attn.prompt", "blocks.0.attn.prefix_key", "blocks.0.mlp.adapter_up", "head.weight"} <= trainable


def parallel_form(attn, x: torch.Tensor, bias: torch.Tensor | None, mask: torch.Tensor | None) -> torch.Tensor:
    """U-Tuning's MHA(x) + U(x): the frozen timm module untouched, plus U(x) = W_o [lambda (A(Q,P_k,P_v) - A(Q,K,V))]
    with lambda the share of softmax mass on the prefix (docs/methods.md#prefix)."""
    base = attn.base
    b, n, _ = x.shape
    q, k, v = base.qkv(x).reshape(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    pk, pv = attn._heads(attn.prefix_key[:1]), attn._heads(attn.prefix_value[:1])
    scale = attn.head_dim**-0.5
    scores, prefix_scores = q @ k.transpose(-2, -1) * scale, q @ pk.transpose(-2, -1) * scale
    if bias is not None:
        scores = scores + bias
    heads, prefix_heads = scores.softmax(-1) @ v, prefix_scores.softmax(-1) @ pv
    share = torch.sigmoid(prefix_scores.logsumexp(-1, keepdim=True) - scores.logsumexp(-1, keepdim=True))
    branch = F.linear((share * (prefix_heads - heads)).transpose(1, 2).reshape(b, n, -1), base.proj.weight)
    frozen = base(x) if mask is None and bias is None else base(x, mask=mask)
    return frozen + branch


def test_parallel_prefix_equals_concatenated_keys_on_vit() -> None:
    model = tune(VIT, "prefix", 3).eval()
    perturb_task_parameters(model, std=0.3)
    attn = model.model.blocks[3].attn
    x = torch.randn(2, 197, 192)
    with torch.no_grad():
        torch.testing.assert_close(attn(x), parallel_form(attn, x, None, None), atol=1e-5, rtol=0)


def test_parallel_prefix_equals_concatenated_keys_on_shifted_swin_windows() -> None:
    model = tune(SWIN, "prefix", 3).eval()
    perturb_task_parameters(model, std=0.3)
    block = model.model.layers[0].blocks[1]
    assert any(block.shift_size) and block.attn_mask is not None
    attn, mask = block.attn, block.attn_mask
    windows, n = mask.shape[0], mask.shape[1]
    x = torch.randn(2 * windows, n, 96)
    bias = attn.base._get_rel_pos_bias() + mask.repeat(2, 1, 1).unsqueeze(1)
    with torch.no_grad():
        torch.testing.assert_close(attn(x, mask=mask), parallel_form(attn, x, bias, mask), atol=1e-5, rtol=0)


def vpt_deep_logits(model: TunedModel, x: torch.Tensor) -> torch.Tensor:
    """VPT-deep as released: prompt tokens appended after the patch tokens at block 0, replaced at every later block,
    run through the whole frozen block (attention and MLP), dropped before the head."""
    vit = model.model
    tokens = vit.norm_pre(vit._pos_embed(vit.patch_embed(x)))
    real = tokens.shape[1]
    for block in vit.blocks:
        prompt = block.attn.prompt[:1].expand(x.shape[0], -1, -1)
        tokens = torch.cat([tokens[:, :real], prompt], dim=1)
        tokens = tokens + block.ls1(block.attn.base(block.norm1(tokens)))
        tokens = tokens + block.ls2(block.mlp(block.norm2(tokens)))
    return vit.forward_head(vit.norm(tokens[:, :real]))


def test_prompt_as_keys_and_values_equals_vpt_deep_tokens() -> None:
    model = tune(VIT, "prompt", 5, length=6).eval()
    perturb_task_parameters(model, std=0.3)
    x = images(2)
    with torch.no_grad():
        assert_close_relative(model(x), vpt_deep_logits(model, x))


def test_adapter_starts_as_the_frozen_backbone() -> None:
    torch.manual_seed(1)
    backbone = create_backbone(VIT)
    linear = TunedModel(copy.deepcopy(backbone), VIT, "linear", [4]).eval()
    adapter = TunedModel(copy.deepcopy(backbone), VIT, "adapter", [4]).eval()
    adapter.load_state({**adapter.state(0), **linear.state(0)})
    with torch.no_grad():
        torch.testing.assert_close(adapter(images(2)), linear(images(2)))


@pytest.mark.parametrize(
    ("arch", "method"),
    [(arch, method) for arch in (VIT, SWIN) for method in TOKEN_METHODS]
    + [("convnext_atto", "adapter"), ("tf_efficientnet_lite0", "adapter")],
)
def test_mixed_batch_equals_each_sample_alone(arch: str, method: str) -> None:
    classes, task_ids = [5, 3, 7], torch.tensor([2, 0, 1, 2])
    model = tune(arch, method, classes).eval()
    perturb_task_parameters(model, std=0.05)
    x = images(len(task_ids))
    with torch.no_grad():
        mixed = model(x, task_ids)
        for i, task in enumerate(task_ids.tolist()):
            alone = model(x[i : i + 1], torch.tensor([task]))
            assert_close_relative(mixed[i : i + 1, : classes[task]], alone[:, : classes[task]])
        other = model(x[:1], torch.tensor([1]))[:, :3]
    assert not torch.allclose(other, mixed[:1, :3])  # task 2 and task 1 really differ


@pytest.mark.parametrize("method", ["prefix", "prompt", "utuning"])
def test_attention_tuners_refuse_cnns_and_merging(method: str) -> None:
    with pytest.raises(AdapterBankError, match="needs a ViT or Swin backbone"):
        tune("convnext_atto", method, 3)
    with pytest.raises(AdapterBankError, match="cannot be merged"):
        tune(VIT, method, 3).merge(0)
    with pytest.raises(AdapterBankError, match="prefix length must be an integer >= 1"):
        tune(VIT, "prefix", 3, length=0)


@pytest.fixture(scope="module")
def vit_bank(tmp_path_factory):
    """utuning, prompt and SSF tasks on one ViT backbone."""
    torch.manual_seed(5)
    backbone = create_backbone(VIT)
    bank = create_bank(tmp_path_factory.mktemp("ut") / "bank", backbone, VIT, "random-init")
    for i, (name, method, classes) in enumerate(
        [("u0", "utuning", 4), ("u1", "utuning", 6), ("p0", "prompt", 3), ("s0", "ssf", 5)]
    ):
        model = TunedModel(copy.deepcopy(backbone), VIT, method, [classes]).eval()
        perturb_task_parameters(model, std=0.05, seed=20 + i)
        commit(bank, task_record(model, name))
    return bank


@pytest.mark.slow
def test_export_keeps_extra_ops_with_parity(vit_bank, tmp_path: Path) -> None:
    single = export_task(vit_bank, "u0", tmp_path)
    manifest = json.loads(single.manifest.read_text())
    assert manifest["merged"] is False and single.parity_error <= 1e-4
    assert [op.split(":")[0] for op in manifest["extra_ops"]] == ["prefix", "prompt", "parallel adapter"]
    bare = export_task(vit_bank, "s0", tmp_path)  # SSF merges: the bare backbone's graph
    assert sum(graph_stats(single.graph)["ops"].values()) > sum(graph_stats(bare.graph)["ops"].values())

    multi = export_multi_task(vit_bank, ["u0", "u1"], "both", tmp_path)
    ids = np.array([1, 0, 1], dtype=np.int64)
    x = images(3, seed=2).numpy()
    mixed = session(multi.graph).run(["logits"], {"images": x, "task_id": ids})[0]
    alone = session(single.graph).run(["logits"], {"images": x[1:2]})[0]
    assert np.abs(mixed[1:2, :4] - alone).max() <= 1e-4
    model, _ = load_tasks(vit_bank, ["u1"])
    with torch.no_grad():
        expected = model(torch.from_numpy(x[[0, 2]])).numpy()
    assert np.abs(mixed[[0, 2], :6] - expected).max() <= 1e-4


def test_runtime_serves_utuning_mixed_with_other_methods(vit_bank) -> None:
    runtime = TorchRuntime(vit_bank)
    order = ["u1", "s0", "u0", "p0", "u1", "s0"]
    x = images(len(order), seed=8)
    out = runtime.predict(x, order)
    for row, name in enumerate(order):
        model, [record] = load_tasks(vit_bank, [name])
        with torch.no_grad():
            alone = model(x[row : row + 1])
        assert out[row].shape == (len(record.class_names),)
        assert_close_relative(out[row][None], alone)
