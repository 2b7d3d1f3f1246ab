"""Training settings: defaults < recipe < command-line flags."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from adapterbank.bank.store import check_task_name
from adapterbank.errors import AdapterBankError
from adapterbank.methods import get_method, make_config
from adapterbank.recipes import load_recipe

DEFAULT_BACKBONE = "vit_base_patch16_224.orig_in21k"  # ViT-B/16 ImageNet-21k, as the papers


@dataclasses.dataclass
class TrainSettings:
    task: str
    method: str
    data: str
    bank: str = "bank"
    backbone: str | None = None  # None: the bank's backbone, or DEFAULT_BACKBONE for a new bank
    checkpoint: str | None = None  # weight spec (adapterbank.weight_specs): file, 'packaged', 'none'; None: timm's
    epochs: int = 100
    batch_size: int = 32
    lr: float = 1e-3
    head_lr: float | None = None  # the head's own lr (None: `lr`, as the papers); short schedules need a faster head
    weight_decay: float = 1e-4
    warmup_epochs: float = 10.0  # at most half of the run
    warmup_lr: float = 1e-6
    min_lr: float = 1e-5
    schedule: str = "step"  # 'step': lr changes every step; 'epoch': timm's per-epoch cosine (both releases)
    cooldown_epochs: float = 0.0  # epochs at min_lr after the cosine (timm's scheduler; SSF runs 10)
    label_smoothing: float = 0.0
    mixup: float = 0.0  # timm Mixup alphas (SSF FGVC: 0.8 and 1.0); either > 0 trains on soft targets
    cutmix: float = 0.0
    random_erase: float = 0.0  # timm RandomErasing probability, pixel mode (SSF FGVC: 0.25)
    ema_decay: float = 0.0  # > 0: EMA of the task's tensors (timm ModelEmaV3); evaluated and banked instead
    drop_path_rate: float = 0.0  # backbone stochastic depth, training only (SNELL 0.1; SSF 0 to 0.2 per task)
    augment: str | None = None  # 'none', 'fgvc' or 'simple'; None: 'none' for VTAB-1k, 'fgvc' otherwise
    image_size: int | None = None  # None: the backbone's input size
    # Preprocessing contract, stored with the task; None: the backbone's pretrained config
    mean: list[float] | None = None
    std: list[float] | None = None
    interpolation: str | None = None  # eval resize: bicubic, bilinear or nearest
    crop_pct: float | None = None  # eval: resize to size / crop_pct, centre crop (augment fgvc/simple)
    train_interpolation: str | None = None  # random resized crop; None: as `interpolation`; 'random' as timm
    seed: int = 0
    max_steps: int | None = None
    eval_every: int = 10  # epochs; the last epoch is always evaluated
    train_split: str | None = None
    eval_split: str | None = None
    num_workers: int = 2
    checkpoint_every: int = 0  # steps between resume checkpoints; 0: at the end of every epoch only
    resume: bool = False
    recipe: str | None = None
    options: dict[str, Any] = dataclasses.field(default_factory=dict)  # method options: rank, sparsity, ...

    def validate(self) -> None:
        _check_types(self)  # recipes and suite files are YAML anyone may write: types first, then ranges
        check_task_name(self.task)  # before hours of training, not at commit time
        make_config(get_method(self.method), self.options)
        for name in ("epochs", "batch_size", "eval_every"):
            if getattr(self, name) < 1:
                raise AdapterBankError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        for name in ("lr", "head_lr"):
            value = getattr(self, name)
            if name == "head_lr" and value is None:
                continue
            if isinstance(value, bool) or not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise AdapterBankError(f"--{name.replace('_', '-')} must be a positive number, got {value!r}")
        for name in ("weight_decay", "min_lr", "warmup_lr"):
            _check_range(name, getattr(self, name), 0.0, math.inf)
        if not 0 <= self.seed < 2**31:
            raise AdapterBankError(f"--seed must be in [0, 2^31), got {self.seed}")
        for name in ("checkpoint_every", "num_workers"):
            if getattr(self, name) < 0:
                flag = {"num_workers": "workers"}.get(name, name).replace("_", "-")
                raise AdapterBankError(f"--{flag} must be 0 or more, got {getattr(self, name)}")
        if self.image_size is not None and self.image_size < 1:
            raise AdapterBankError(f"--image-size must be a positive number of pixels, got {self.image_size}")
        if self.max_steps is not None and self.max_steps < 1:
            raise AdapterBankError(f"--max-steps must be at least 1, got {self.max_steps}")
        for name in ("label_smoothing", "random_erase", "ema_decay", "drop_path_rate"):
            _check_range(name, getattr(self, name), 0.0, 1.0)
        for name in ("mixup", "cutmix", "cooldown_epochs", "warmup_epochs"):
            _check_range(name, getattr(self, name), 0.0, math.inf)
        if self.schedule not in ("step", "epoch"):
            raise AdapterBankError(f"schedule must be 'step' or 'epoch', got {self.schedule!r}")

    @property
    def mixes(self) -> bool:
        return self.mixup > 0 or self.cutmix > 0

    def resume_key(self) -> dict[str, Any]:
        """What must not change between a run and its resumption."""
        keep = (
            "task",
            "method",
            "data",
            "epochs",
            "batch_size",
            "lr",
            "head_lr",
            "weight_decay",
            "seed",
            "max_steps",
            "image_size",
            "augment",
            "options",
            "schedule",
            "cooldown_epochs",
            "warmup_epochs",
            "min_lr",
            "warmup_lr",
            "label_smoothing",
            "mixup",
            "cutmix",
            "random_erase",
            "ema_decay",
            "drop_path_rate",
            "mean",
            "std",
            "interpolation",
            "crop_pct",
            "train_interpolation",
        )
        return {k: getattr(self, k) for k in keep}


FIELDS = {f.name for f in dataclasses.fields(TrainSettings)}
_KINDS = {  # what each annotation accepts; bool is not a number here, an int is a float
    "str": lambda v: isinstance(v, str) and "\0" not in v,
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "bool": lambda v: isinstance(v, bool),
    "None": lambda v: v is None,
    "list[float]": lambda v: isinstance(v, list) and all(_KINDS["float"](x) for x in v),
    "dict[str, Any]": lambda v: isinstance(v, dict) and all(isinstance(k, str) for k in v),
}


def _check_types(settings: TrainSettings) -> None:
    """Every setting of the type its annotation names, as a one-line error naming the setting."""
    for f in dataclasses.fields(TrainSettings):
        value = getattr(settings, f.name)
        kinds = [kind.strip() for kind in str(f.type).split("|")]
        if not any(_KINDS[kind](value) for kind in kinds):
            wanted = " or ".join("none" if k == "None" else k for k in kinds)
            raise AdapterBankError(f"setting '{f.name}' must be {wanted}, got {value!r:.60}")


def _check_range(name: str, value: float, low: float, high: float) -> None:
    """low <= value < high (any value >= low when high is infinite), and a real number."""
    if not isinstance(value, (int, float)) or not math.isfinite(value) or not low <= value < high:
        bound = f"at least {low:g}" if math.isinf(high) else f"in [{low:g}, {high:g})"
        raise AdapterBankError(f"{name} must be {bound}, got {value!r}")


def resolve(flags: dict[str, Any], method_options: dict[str, Any]) -> TrainSettings:
    """Defaults, then the recipe (if any), then every flag the user gave (None means not given). A `-o KEY=VALUE`
    naming a training setting (e.g. drop_path_rate, mixup, ema_decay) sets it; the others are method options."""
    given = {k: v for k, v in flags.items() if v is not None}
    if "options" in given or "options" in method_options:
        raise AdapterBankError("method options are settings of their own (rank: 4), not an `options:` mapping")
    merged: dict[str, Any] = {}
    options: dict[str, Any] = {}
    if given.get("recipe"):
        for key, value in load_recipe(given["recipe"], given["method"]).items():
            if key == "options":
                recipe = given["recipe"]
                raise AdapterBankError(f"recipe '{recipe}': method options are keys of their own, not `options:`")
            (merged if key in FIELDS else options)[key] = value
        given["recipe"] = merged.pop("recipe", given["recipe"])
    merged.update(given)
    given_options = {k: v for k, v in method_options.items() if v is not None}
    merged.update({k: v for k, v in given_options.items() if k in FIELDS and k not in given})
    options.update({k: v for k, v in given_options.items() if k not in FIELDS})
    settings = TrainSettings(**merged, options=options)
    settings.validate()
    return settings
