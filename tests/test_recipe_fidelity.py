"""Every SNELL and SSF recipe equals the released script it cites (ssfgunner/SNELL @ e9d5185, dongzelian/SSF @
e94e0e7). The table below was read from those scripts; each row: the script path, then its settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from adapterbank.recipes import find_recipe
from adapterbank.training.settings import resolve

IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]

# recipe: ((SNELL script, rank, init_thres, batch, lr, weight decay, epochs),
#          (SSF script, batch = 2 GPUs x 32, lr, weight decay, drop-path, epochs, model EMA decay or 0))
RELEASED = {
    "vtab/caltech101": (
        ("scripts/vtab/snell32/vit_caltech_snell.sh", 32, 0.4, 16, 0.001, 0.01, 200),
        ("train_scripts/vit/vtab/caltech101/train_ssf.sh", 64, 0.001, 0.05, 0.1, 100, 0.0),
    ),
    "vtab/cifar": (
        ("scripts/vtab/snell32/vit_cifar_snell.sh", 32, 0.9, 16, 0.001, 0.01, 200),
        ("train_scripts/vit/vtab/cifar_100/train_ssf.sh", 64, 0.005, 5e-05, 0.0, 100, 0.0),
    ),
    "vtab/clevr_count": (
        ("scripts/vtab/snell32/vit_clevr_count_snell.sh", 32, 0.1, 16, 0.001, 0.01, 100),
        ("train_scripts/vit/vtab/clevr_count/train_ssf.sh", 64, 0.002, 0.05, 0.1, 100, 0.0),
    ),
    "vtab/clevr_dist": (
        ("scripts/vtab/snell32/vit_clevr_dist_snell.sh", 32, 0.74, 16, 0.001, 0.001, 100),
        ("train_scripts/vit/vtab/clevr_dist/train_ssf.sh", 64, 0.05, 0.05, 0.1, 100, 0.0),
    ),
    "vtab/diabetic_retinopathy": (
        ("scripts/vtab/snell32/vit_retino_snell.sh", 32, 0.5, 32, 0.001, 0.05, 100),
        ("train_scripts/vit/vtab/diabetic_retinopathy/train_ssf.sh", 64, 0.005, 5e-05, 0.2, 100, 0.0),
    ),
    "vtab/dmlab": (
        ("scripts/vtab/snell32/vit_dmlab_snell.sh", 32, 0.0, 8, 0.001, 0.0001, 100),
        ("train_scripts/vit/vtab/dmlab/train_ssf.sh", 64, 0.005, 5e-05, 0.1, 100, 0.0),
    ),
    "vtab/dsprites_loc": (
        ("scripts/vtab/snell32/vit_dloc_snell.sh", 32, 0.0, 16, 0.001, 0.01, 100),
        ("train_scripts/vit/vtab/dsprites_loc/train_ssf.sh", 64, 0.01, 5e-05, 0.0, 100, 0.0),
    ),
    "vtab/dsprites_ori": (
        ("scripts/vtab/snell32/vit_dori_snell.sh", 32, 0.88, 8, 0.001, 0.01, 100),
        ("train_scripts/vit/vtab/dsprites_ori/train_ssf.sh", 64, 0.005, 5e-05, 0.2, 100, 0.0),
    ),
    "vtab/dtd": (
        ("scripts/vtab/snell32/vit_dtd_snell.sh", 32, 0.995, 64, 0.001, 0.01, 200),
        ("train_scripts/vit/vtab/dtd/train_ssf.sh", 64, 0.005, 5e-05, 0.0, 100, 0.0),
    ),
    "vtab/eurosat": (
        ("scripts/vtab/snell32/vit_eurosat_snell.sh", 32, 0.5, 16, 0.001, 0.0004, 100),
        ("train_scripts/vit/vtab/eurosat/train_ssf.sh", 64, 0.003, 0.05, 0.2, 100, 0.0),
    ),
    "vtab/kitti": (
        ("scripts/vtab/snell32/vit_kitti_snell.sh", 32, 0.37, 8, 0.001, 0.01, 100),
        ("train_scripts/vit/vtab/kitti/train_ssf.sh", 64, 0.01, 5e-05, 0.0, 100, 0.0),
    ),
    "vtab/oxford_flowers102": (
        ("scripts/vtab/snell32/vit_flower_snell.sh", 32, 0.9, 32, 0.001, 0.01, 200),
        ("train_scripts/vit/vtab/flowers102/train_ssf.sh", 64, 0.005, 5e-05, 0.0, 100, 0.0),
    ),
    "vtab/oxford_iiit_pet": (
        ("scripts/vtab/snell32/vit_pets_snell.sh", 32, 0.5, 32, 0.001, 0.01, 200),
        ("train_scripts/vit/vtab/pets/train_ssf.sh", 64, 0.005, 5e-05, 0.0, 100, 0.0),
    ),
    "vtab/patch_camelyon": (
        ("scripts/vtab/snell32/vit_camelyon_snell.sh", 32, 0.15, 16, 0.0007, 0.05, 100),
        ("train_scripts/vit/vtab/patch_camelyon/train_ssf.sh", 64, 0.005, 5e-05, 0.0, 100, 0.0),
    ),
    "vtab/resisc45": (
        ("scripts/vtab/snell32/vit_resisc_snell.sh", 32, 0.0, 32, 0.001, 0.01, 100),
        ("train_scripts/vit/vtab/resisc45/train_ssf.sh", 64, 0.002, 5e-05, 0.1, 100, 0.0),
    ),
    "vtab/smallnorb_azi": (
        ("scripts/vtab/snell32/vit_snorbazi_snell.sh", 32, 0.0, 16, 0.001, 0.01, 100),
        ("train_scripts/vit/vtab/smallnorb_azi/train_ssf.sh", 64, 0.02, 5e-05, 0.1, 100, 0.0),
    ),
    "vtab/smallnorb_ele": (
        ("scripts/vtab/snell32/vit_snorbele_snell.sh", 32, 0.08, 16, 0.001, 0.001, 200),
        ("train_scripts/vit/vtab/smallnorb_ele/train_ssf.sh", 64, 0.005, 0.05, 0.2, 100, 0.0),
    ),
    "vtab/sun397": (
        ("scripts/vtab/snell32/vit_sun397_snell.sh", 32, 0.99, 32, 0.001, 0.001, 200),
        ("train_scripts/vit/vtab/sun397/train_ssf.sh", 64, 0.005, 5e-05, 0.0, 100, 0.0),
    ),
    "vtab/svhn": (
        ("scripts/vtab/snell32/vit_svhn_snell.sh", 32, 0.0, 32, 0.001, 0.01, 200),
        ("train_scripts/vit/vtab/svhn/train_ssf.sh", 64, 0.01, 5e-05, 0.0, 100, 0.0),
    ),
    "fgvc/cub": (
        ("scripts/fgvc/snell8/vit_cub_snell.sh", 8, 0.3, 32, 0.001, 0.01, 100),
        ("train_scripts/vit/fgvc/cub_2011/train_ssf.sh", 64, 0.01, 0.05, 0.0, 100, 0.9998),
    ),
    "fgvc/nabirds": (
        ("scripts/fgvc/snell8/vit_nabirds_snell.sh", 8, 0.1, 32, 0.0005, 0.01, 100),
        ("train_scripts/vit/fgvc/nabirds/train_ssf.sh", 64, 0.0002, 0.05, 0.1, 100, 0.9998),
    ),
    "fgvc/oxfordflower": (
        ("scripts/fgvc/snell8/vit_flowers_snell.sh", 8, 0.6, 32, 0.001, 0.01, 100),
        ("train_scripts/vit/fgvc/oxford_flowers/train_ssf.sh", 64, 0.01, 0.05, 0.1, 100, 0.999),
    ),
    "fgvc/stanfordcar": (
        ("scripts/fgvc/snell8/vit_cars_snell.sh", 8, 0.0, 32, 0.001, 0.01, 100),
        ("train_scripts/vit/fgvc/stanford_cars/train_ssf.sh", 64, 0.02, 0.05, 0.0, 100, 0.9998),
    ),
    "fgvc/stanforddog": (
        ("scripts/fgvc/snell8/vit_dogs_snell.sh", 8, 0.1, 32, 0.0003, 0.001, 100),
        ("train_scripts/vit/fgvc/stanford_dogs/train_ssf.sh", 64, 0.00025, 0.05, 0.0, 100, 0.9998),
    ),
}


def test_the_table_covers_every_vtab_and_fgvc_recipe() -> None:
    root = Path(__file__).resolve().parents[1] / "recipes"
    names = {str(p.relative_to(root).with_suffix("")) for p in root.glob("*/*.yaml") if p.parent.name != "cpu"}
    assert names == set(RELEASED)


@pytest.mark.parametrize("name", sorted(RELEASED))
def test_snell_recipe_equals_its_released_script(name: str) -> None:
    script, rank, sparsity, batch, lr, weight_decay, epochs = RELEASED[name][0]
    assert script in " ".join(find_recipe(name).read_text().split())
    s = resolve({"task": "t", "method": "snell", "data": "x", "recipe": name}, {})
    assert (s.options["rank"], s.options["sparsity"]) == (rank, sparsity)
    assert (s.batch_size, s.lr, s.weight_decay, s.epochs) == (batch, lr, weight_decay, epochs)
    # train.py defaults no script overrides
    assert (s.warmup_epochs, s.warmup_lr, s.min_lr, s.drop_path_rate, s.cooldown_epochs) == (10, 1e-6, 1e-5, 0.1, 0)
    assert s.schedule == "epoch"  # timm's cosine stepped once per epoch
    assert (s.mean, s.std, s.label_smoothing, s.mixup, s.cutmix, s.ema_decay) == (
        IMAGENET_MEAN,
        IMAGENET_STD,
        0,
        0,
        0,
        0,
    )
    if name.startswith("fgvc/"):  # timm training transform; eval Resize(256, bilinear) + CenterCrop(224)
        assert (s.augment, s.train_interpolation, s.interpolation, s.crop_pct) == ("fgvc", "bicubic", "bilinear", 0.875)
    else:  # --no_aug --direct_resize: Resize((224, 224), bicubic)
        assert (s.augment, s.interpolation) == ("none", "bicubic")


@pytest.mark.parametrize("name", sorted(RELEASED))
def test_ssf_recipe_equals_its_released_script(name: str) -> None:
    script, batch, lr, weight_decay, drop_path, epochs, ema = RELEASED[name][1]
    source = " ".join(find_recipe(name).read_text().split())
    assert script in source and "AugReg" in source
    s = resolve({"task": "t", "method": "ssf", "data": "x", "recipe": name}, {})
    assert (s.batch_size, s.lr, s.weight_decay, s.drop_path_rate, s.epochs) == (
        batch,
        lr,
        weight_decay,
        drop_path,
        epochs,
    )
    assert (s.warmup_epochs, s.warmup_lr, s.min_lr, s.cooldown_epochs, s.ema_decay) == (10, 1e-7, 1e-8, 10, ema)
    assert s.schedule == "epoch"
    assert s.mean is None and s.std is None  # the backbone's pretrained config, as timm resolves it there
    if name.startswith("fgvc/"):  # --simple-aug; mixup, cutmix, smoothing and random erasing left at train.py's
        assert (s.augment, s.train_interpolation, s.random_erase) == ("simple", "random", 0.25)
        assert (s.mixup, s.cutmix, s.label_smoothing) == (0.8, 1.0, 0.1)
    else:  # --no-aug --direct-resize --mixup 0 --cutmix 0 --smoothing 0
        assert (s.augment, s.mixup, s.cutmix, s.label_smoothing, s.random_erase) == ("none", 0, 0, 0, 0)


def test_epoch_schedule_is_timms_cosine_stepped_per_epoch() -> None:
    """Both trainers step timm's CosineLRScheduler once per epoch, and run its cool-down epochs at min lr."""
    import torch
    from timm.scheduler import CosineLRScheduler

    from adapterbank.training.schedule import epoch_cosine_factor

    def optimizer() -> torch.optim.Optimizer:
        return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)

    reference = CosineLRScheduler(optimizer(), t_initial=20, lr_min=1e-5, warmup_t=3, warmup_lr_init=1e-6)
    ours_optimizer, per_epoch = optimizer(), 4
    ours = torch.optim.lr_scheduler.LambdaLR(ours_optimizer, epoch_cosine_factor(per_epoch, 20, 3, 1e-3, 1e-5, 1e-6))
    for epoch in range(25):  # 20 epochs + 5 cool-down
        expected = reference._get_lr(epoch)[0]
        for _ in range(per_epoch):
            assert ours_optimizer.param_groups[0]["lr"] == pytest.approx(expected, rel=1e-9)
            ours_optimizer.step()
            ours.step()


def test_head_lr_gives_the_head_its_own_groups_on_the_same_schedule() -> None:
    """Without head_lr, the papers' two groups (decay on matrices); with it, the head's tensors in groups of their
    own at that lr, every group following the same warm-up and cosine; a bad head_lr is refused in one line."""
    import torch

    from adapterbank import AdapterBankError, TunedModel, create_backbone
    from adapterbank.training.schedule import warmup_cosine_factor

    model = TunedModel(create_backbone("test_vit"), "test_vit", "ssf", [5])
    trainable = {id(p) for _, p in model.trainable_parameters()}
    head = {id(p) for p in model.model.get_submodule(model.head_path).parameters()}
    plain = model.param_groups(0.1)
    assert [g["weight_decay"] for g in plain] == [0.1, 0.0] and all("lr" not in g for g in plain)
    split = model.param_groups(0.1, head_lr=0.02)
    assert sorted(id(p) for g in split for p in g["params"]) == sorted(trainable)
    assert {id(p) for g in split if g.get("lr") == 0.02 for p in g["params"]} == head
    # SSF's own tensors are vectors (no decay); the head's weight decays, its bias does not
    assert [(g.get("lr"), g["weight_decay"]) for g in split] == [(None, 0.0), (0.02, 0.1), (0.02, 0.0)]
    optimizer = torch.optim.AdamW(split, lr=1e-3)
    factor = warmup_cosine_factor(cosine_end=10, warmup_steps=2, lr=1e-3, min_lr=1e-6, warmup_lr=1e-6)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    for _ in range(6):
        optimizer.step()
        schedule.step()
        assert optimizer.param_groups[1]["lr"] / optimizer.param_groups[0]["lr"] == pytest.approx(20.0)
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(AdapterBankError, match="--head-lr must be a positive number"):
            resolve({"task": "t", "method": "ssf", "data": ".", "head_lr": bad}, {}).validate()


def test_the_deepspeed_engine_steps_as_plain_adamw_without_clipping() -> None:
    """The released trainers never clip gradients; DeepSpeed clips to norm 1.0 unless told. A step on a loss whose
    gradient norm is far above 1 moves the weights exactly as torch's AdamW does with the raw gradient."""
    import torch

    from adapterbank import TunedModel, create_backbone
    from adapterbank.process import training_process
    from adapterbank.training.trainer import deepspeed_engine

    torch.manual_seed(0)
    model = TunedModel(create_backbone("test_vit"), "test_vit", "ssf", [5])
    reference = {n: p.detach().clone() for n, p in model.trainable_parameters()}
    images = torch.randn(4, 3, *model.model.pretrained_cfg["input_size"][1:])
    with training_process():
        optimizer = torch.optim.AdamW(model.param_groups(0.0), lr=1e-3)
        engine = deepspeed_engine(model, optimizer, None, 4)
        loss = 1000.0 * engine(images).pow(2).mean()
        engine.backward(loss)
        grads = {n: p.grad.detach().clone() for n, p in model.trainable_parameters()}
        assert torch.cat([g.flatten() for g in grads.values()]).norm() > 10.0
        engine.step()
    params = {n: torch.nn.Parameter(v) for n, v in reference.items()}
    for n, p in params.items():
        p.grad = grads[n]
    torch.optim.AdamW(params.values(), lr=1e-3, weight_decay=0.0).step()
    for n, p in model.trainable_parameters():
        assert torch.allclose(p, params[n], atol=1e-7), n
