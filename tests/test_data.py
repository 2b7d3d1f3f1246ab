"""Every data layout on the real images in ../shared/data, and broken inputs as clear errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from adapterbank import AdapterBankError
from adapterbank.data import detect_layout, open_dataset
from adapterbank.data.images import ImageDataset, check_headers
from adapterbank.data.preprocessing import Preprocessing
from tests.helpers import SHARED_DATA

needs_shared = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data is not present")
TRANSFORM = Preprocessing(32, "direct", 0.875, "bicubic", (0.5,) * 3, (0.5,) * 3).eval_transform()


@needs_shared
@pytest.mark.parametrize(
    ("folder", "layout", "classes", "sizes", "defaults"),
    [
        ("vtab-1k/cifar10", "vtab", 10, {"train800val200": 1000, "test": 2000}, ("train800val200", "test")),
        ("vtab-1k/pneumonia", "vtab", 2, {"train800": 800, "val200": 200, "test": 624}, ("train800val200", "test")),
        ("fgvc/mnist5k", "fgvc", 10, {"train": 800, "val": 200, "test": 2000}, ("train", "test")),
        ("imagefolder/hymenoptera", "imagefolder", 2, {"train": 244, "val": 153}, ("train", "val")),
    ],
)
def test_layouts(folder: str, layout: str, classes: int, sizes: dict, defaults: tuple) -> None:
    dataset = open_dataset(SHARED_DATA / folder)
    assert dataset.layout == layout and len(dataset.class_names) == classes
    for split, size in sizes.items():
        assert len(dataset.split(split)) == size
    assert dataset.default_splits() == defaults
    image, label = ImageDataset(dataset.split(defaults[1]), TRANSFORM)[0]
    assert image.shape == (3, 32, 32) and 0 <= label < classes  # grayscale sets come out RGB too


@needs_shared
def test_imagefolder_class_names() -> None:
    assert open_dataset(SHARED_DATA / "imagefolder/hymenoptera").class_names == ["ants", "bees"]


@needs_shared
def test_csv_layout_with_class_names(tmp_path: Path) -> None:
    source = open_dataset(SHARED_DATA / "imagefolder/hymenoptera")
    names = source.class_names
    for split in ("train", "val"):
        rows = ["path,label"] + [f"{p},{names[label]}" for p, label in source.split(split)[::7]]
        (tmp_path / f"{split}.csv").write_text("\n".join(rows))
    dataset = open_dataset(tmp_path)
    assert dataset.layout == "csv" and dataset.class_names == ["ants", "bees"]
    assert dataset.default_splits() == ("train", "val") and len(dataset.split("val")) == len(source.split("val")[::7])


def test_vpt_json_ids_are_mapped_to_contiguous_labels(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    from PIL import Image

    for name in ("a.png", "b.png", "c.png"):
        Image.new("L", (8, 8), 128).save(tmp_path / "images" / name)
    (tmp_path / "train.json").write_text(json.dumps({"a.png": 7, "b.png": 3}))
    (tmp_path / "test.json").write_text(json.dumps({"c.png": 7}))
    dataset = open_dataset(tmp_path)
    assert dataset.class_names == ["3", "7"]
    assert [label for _, label in dataset.split("train")] == [1, 0]
    image, _ = ImageDataset(dataset.split("test"), TRANSFORM)[0]
    assert image.shape == (3, 32, 32)


def _tiny_vtab(tmp_path: Path) -> Path:
    from PIL import Image

    (tmp_path / "images").mkdir(parents=True)
    for i in range(4):
        Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(tmp_path / "images" / f"{i}.jpg")
    (tmp_path / "train800val200.txt").write_text("images/0.jpg 0\nimages/1.jpg 1\n")
    (tmp_path / "test.txt").write_text("images/2.jpg 0\nimages/3.jpg 1\n")
    return tmp_path


def test_broken_inputs(tmp_path: Path) -> None:
    with pytest.raises(AdapterBankError, match="does not exist"):
        open_dataset(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(AdapterBankError, match="cannot tell the layout"):
        detect_layout(tmp_path / "empty")
    root = _tiny_vtab(tmp_path / "vtab")
    (root / "classes.txt").write_text("zero\none\n")
    (root / "test.txt").write_text("images/2.jpg 0\nimages/3.jpg 5\n")
    with pytest.raises(AdapterBankError, match=r"test.txt: label 5 of 3.jpg is outside 0..1"):
        open_dataset(root)
    (root / "test.txt").write_text("images/2.jpg 0\nimages/9.jpg 1\n")
    with pytest.raises(AdapterBankError, match=r"missing image: .*9.jpg"):
        open_dataset(root)
    (root / "test.txt").write_text("images/2.jpg zero\n")
    with pytest.raises(AdapterBankError, match=r"test.txt:1: expected '<path> <integer label>'"):
        open_dataset(root)
    (root / "test.txt").write_text("")
    with pytest.raises(AdapterBankError, match=r"split 'test' .* is empty"):
        open_dataset(root).split("test")
    (root / "test.txt").write_text("images/2.jpg 0\nimages/3.jpg 1\n")
    (root / "images" / "3.jpg").write_bytes(b"not an image")
    dataset = open_dataset(root)
    with pytest.raises(AdapterBankError, match=r"cannot read image .*3.jpg"):
        check_headers(dataset.split("test"))
    with pytest.raises(AdapterBankError, match=r"cannot read image .*3.jpg"):
        ImageDataset(dataset.split("test"), TRANSFORM)[1]


def test_fgvc_test_class_unknown_to_train(tmp_path: Path) -> None:
    root = _tiny_vtab(tmp_path / "v")
    (root / "train.json").write_text(json.dumps({"images/0.jpg": 1}))
    (root / "test.json").write_text(json.dumps({"images/1.jpg": 4}))
    for f in ("train800val200.txt", "test.txt"):
        (root / f).unlink()
    with pytest.raises(AdapterBankError, match=r"class id 4 does not occur in train\.json"):
        open_dataset(root)


def test_fgvc_augmentation_is_random_and_eval_is_not() -> None:
    from PIL import Image

    image = Image.new("RGB", (64, 48), (10, 200, 30))
    image.putpixel((3, 3), (255, 255, 255))
    contract = Preprocessing(32, "crop", 0.875, "bicubic", (0.5,) * 3, (0.5,) * 3)
    evaluation = contract.eval_transform()
    assert torch.equal(evaluation(image), evaluation(image))
    for augment in ("fgvc", "simple"):
        train = contract.train_transform(augment, "random", random_erase=0.25)
        assert any(not torch.equal(train(image), train(image)) for _ in range(5))
    with pytest.raises(AdapterBankError, match="unknown augmentation"):
        contract.train_transform("heavy", "bicubic")


def test_copy_of_shared_is_not_needed_for_unit_cases(tmp_path: Path) -> None:
    root = _tiny_vtab(tmp_path / "t")
    shutil.copy(root / "test.txt", root / "val200.txt")
    assert set(open_dataset(root).splits) == {"train800val200", "val200", "test"}


def test_released_eval_pipelines_are_reproduced() -> None:
    """SNELL FGVC evaluates with Resize(256, bilinear) + CenterCrop(224) and ImageNet mean/std; SSF FGVC with
    Resize(248, bicubic) + CenterCrop(224) and 0.5/0.5; VTAB-1k resizes straight to 224 (both releases)."""
    from PIL import Image
    from torchvision import transforms as T

    image = Image.fromarray((torch.rand(300, 410, 3, generator=torch.Generator().manual_seed(0)) * 255).byte().numpy())
    imagenet = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    cases = [
        (Preprocessing(224, "crop", 224 / 256, "bilinear", *imagenet), T.Resize(256, T.InterpolationMode.BILINEAR)),
        (
            Preprocessing(224, "crop", 0.9, "bicubic", (0.5,) * 3, (0.5,) * 3),
            T.Resize(248, T.InterpolationMode.BICUBIC),
        ),
        (Preprocessing(224, "direct", 0.9, "bicubic", *imagenet), T.Resize((224, 224), T.InterpolationMode.BICUBIC)),
    ]
    for contract, resize in cases:
        released = T.Compose([resize, T.CenterCrop(224), T.ToTensor(), T.Normalize(contract.mean, contract.std)])
        assert torch.equal(contract.eval_transform()(image), released(image))
    assert Preprocessing.from_dict(cases[0][0].to_dict()) == cases[0][0]
    with pytest.raises(AdapterBankError, match="interpolation"):
        Preprocessing(224, "crop", 0.9, "lanczos7", (0.5,) * 3, (0.5,) * 3)
