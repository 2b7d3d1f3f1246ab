"""Reading a dataset folder: which layout it is, its splits, class names, and the papers' default splits.

vtab         train800.txt, val200.txt, train800val200.txt, test.txt ('<relative path> <label>' lines)
fgvc         train.json, val.json, test.json ({relative path: class id}; ids mapped to 0..C-1 sorted)
imagefolder  <split>/<class name>/<file>
csv          <split>.csv with 'path,label' rows (label: integer or class name)
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass
from pathlib import Path

from adapterbank.errors import AdapterBankError

MAX_CLASSES = 1_000_000  # a class id beyond this is a broken list, not a task
_INTEGER = re.compile(r"-?[0-9]+")
_NUMBER = re.compile(r"-?[0-9]*\.?[0-9]+(e-?[0-9]+)?")

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
# (train split, evaluation split) as the papers' protocols: VTAB-1k trains on train800val200 and tests on test.
DEFAULT_SPLITS = {
    "vtab": ("train800val200", "test"),
    "fgvc": ("train", "test"),
    "imagefolder": ("train", "test"),
    "csv": ("train", "test"),
}
FALLBACK_EVAL = "val"


@dataclass
class Dataset:
    root: Path
    layout: str
    class_names: list[str]
    splits: dict[str, list[tuple[Path, int]]]

    def split(self, name: str) -> list[tuple[Path, int]]:
        if name not in self.splits:
            raise AdapterBankError(f"dataset '{self.root}' has no split '{name}' (splits: {', '.join(self.splits)})")
        samples = self.splits[name]
        if not samples:
            raise AdapterBankError(f"split '{name}' of dataset '{self.root}' is empty")
        return samples

    def default_splits(self) -> tuple[str, str]:
        train, evaluation = DEFAULT_SPLITS[self.layout]
        if evaluation not in self.splits and FALLBACK_EVAL in self.splits:
            evaluation = FALLBACK_EVAL
        return train, evaluation


def detect_layout(root: Path) -> str:
    if not root.is_dir():
        raise AdapterBankError(f"data folder '{root}' does not exist")
    if (root / "train800val200.txt").is_file() or (root / "train800.txt").is_file():
        return "vtab"
    if (root / "train.json").is_file():
        return "fgvc"
    if (root / "train.csv").is_file():
        return "csv"
    if (root / "train").is_dir():
        return "imagefolder"
    raise AdapterBankError(
        f"cannot tell the layout of '{root}': expected VTAB-1k lists (train800val200.txt), FGVC json (train.json), "
        f"train.csv, or an ImageFolder train/<class>/ tree"
    )


def open_dataset(root: str | Path) -> Dataset:
    root = Path(root)
    layout = detect_layout(root)
    reader = {"vtab": _read_vtab, "fgvc": _read_fgvc, "imagefolder": _read_imagefolder, "csv": _read_csv}[layout]
    dataset = reader(root)
    for name, samples in dataset.splits.items():
        missing = next((path for path, _ in samples if not path.is_file()), None)
        if missing is not None:
            raise AdapterBankError(f"split '{name}' of '{root}' names a missing image: {missing}")
    return dataset


def _read_vtab(root: Path) -> Dataset:
    splits: dict[str, list[tuple[Path, int]]] = {}
    for name in ("train800", "val200", "train800val200", "test"):
        file = root / f"{name}.txt"
        if not file.is_file():
            continue
        samples = []
        for number, line in enumerate(file.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            path, _, label = line.strip().partition(" ")
            if not _INTEGER.fullmatch(label.strip()):
                raise AdapterBankError(f"{file}:{number}: expected '<path> <integer label>', got '{line.strip()}'")
            samples.append((root / path, int(label)))
        splits[name] = samples
    # without classes.txt the classes are those the training lists know: a label only in val/test is refused below
    labels = [label for name in ("train800", "train800val200") for _, label in splits.get(name, [])]
    classes_file = root / "classes.txt"
    if max(labels, default=0) >= MAX_CLASSES:
        raise AdapterBankError(f"'{root}': label {max(labels)} asks for more than {MAX_CLASSES:,} classes")
    names = (
        [line.strip() for line in classes_file.read_text().splitlines() if line.strip()]
        if classes_file.is_file()
        else [str(i) for i in range(max(labels, default=-1) + 1)]
    )
    for name, samples in splits.items():
        bad = next(((p, label) for p, label in samples if not 0 <= label < len(names)), None)
        if bad is not None:
            raise AdapterBankError(
                f"{root / (name + '.txt')}: label {bad[1]} of {bad[0].name} is outside 0..{len(names) - 1}"
            )
    return Dataset(root, "vtab", names, splits)


def _read_fgvc(root: Path) -> Dataset:
    raw: dict[str, dict[str, int]] = {}
    for name in ("train", "val", "test"):
        file = root / f"{name}.json"
        if file.is_file():
            try:
                entries = json.loads(file.read_text())
            except (ValueError, UnicodeDecodeError) as exc:
                raise AdapterBankError(f"{file}: expected a JSON object {{relative path: class id}} ({exc})") from exc
            if not isinstance(entries, dict):
                raise AdapterBankError(f"{file}: expected a JSON object {{relative path: class id}}")
            bad = next(((k, v) for k, v in entries.items() if type(v) is not int), None)  # not 1.7, "3", null, true
            if bad is not None:
                raise AdapterBankError(f"{file}: class id of '{bad[0]}' must be an integer, got {json.dumps(bad[1])}")
            raw[name] = entries
    ids = sorted(set(raw["train"].values()))
    index = {class_id: i for i, class_id in enumerate(ids)}
    base = _image_base(root, next(iter(raw["train"]), ""))
    splits = {}
    for name, entries in raw.items():
        unknown = sorted(set(entries.values()) - set(index))
        if unknown:
            raise AdapterBankError(f"{root / (name + '.json')}: class id {unknown[0]} does not occur in train.json")
        splits[name] = [(base / path, index[class_id]) for path, class_id in entries.items()]
    return Dataset(root, "fgvc", [str(i) for i in ids], splits)


def _image_base(root: Path, first: str) -> Path:
    """VPT's json paths are relative to the root or to its images/ (CUB, NABirds) or Images/ (Dogs) folder."""
    for base in (root, root / "images", root / "Images"):
        if (base / first).is_file():
            return base
    return root


def _read_imagefolder(root: Path) -> Dataset:
    split_dirs = [d for d in sorted(root.iterdir()) if d.is_dir() and d.name in ("train", "val", "test")]
    names = sorted(d.name for d in (root / "train").iterdir() if d.is_dir())
    if not names:
        raise AdapterBankError(f"ImageFolder '{root / 'train'}' has no class folders")
    splits = {}
    for split in split_dirs:
        samples = []
        for class_dir in sorted(d for d in split.iterdir() if d.is_dir()):
            if class_dir.name not in names:
                raise AdapterBankError(f"class folder '{class_dir}' does not exist under train/")
            files = sorted(p for p in class_dir.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
            samples.extend((p, names.index(class_dir.name)) for p in files)
        splits[split.name] = samples
    return Dataset(root, "imagefolder", names, splits)


def _read_csv(root: Path) -> Dataset:
    rows: dict[str, list[tuple[str, str]]] = {}
    for name in ("train", "val", "test"):
        file = root / f"{name}.csv"
        if not file.is_file():
            continue
        try:
            with file.open(newline="", encoding="utf-8-sig") as f:  # utf-8-sig: Excel writes a BOM
                table = [row for row in csv.reader(f) if row]
        except (UnicodeDecodeError, csv.Error) as exc:
            raise AdapterBankError(f"{file}: not a UTF-8 CSV of 'path,label' rows ({exc})") from exc
        if table and [c.strip().lower() for c in table[0][:2]] == ["path", "label"]:
            table = table[1:]
        bad = next((i for i, row in enumerate(table) if len(row) < 2), None)
        if bad is not None:
            raise AdapterBankError(f"{file}: row {bad + 1} is not 'path,label'")
        rows[name] = [(row[0].strip(), row[1].strip()) for row in table]
    labels = {label for entries in rows.values() for _, label in entries}
    if "" in labels:
        raise AdapterBankError(f"'{root}': a CSV row has an empty label")
    integers = {label for label in labels if _INTEGER.fullmatch(label)}
    numeric = integers == labels
    if integers and not numeric and all(_NUMBER.fullmatch(label) for label in labels):
        bad = sorted(labels - integers)[0]
        raise AdapterBankError(f"'{root}': label '{bad}' is not an integer class id (the others are)")
    if numeric:  # class ids: as many classes as the training split knows; other splits may not add any
        values = sorted(int(label) for label in labels)
        if values and values[0] < 0:
            raise AdapterBankError(f"'{root}': negative label {values[0]} in a CSV split")
        known = [int(label) for _, label in rows.get("train", [])]
        if max(known, default=0) >= MAX_CLASSES:
            raise AdapterBankError(f"'{root}': label {max(known)} asks for more than {MAX_CLASSES:,} classes")
        names = [str(i) for i in range(max(known, default=-1) + 1)]
    else:
        names = sorted({label for _, label in rows.get("train", [])})
    index = {name: i for i, name in enumerate(names)}
    if numeric:
        index.update({label: int(label) for label in labels if int(label) < len(names)})
    splits = {}
    for name, entries in rows.items():
        unknown = next((label for _, label in entries if label not in index), None)
        if unknown is not None:
            raise AdapterBankError(f"{root / (name + '.csv')}: label '{unknown}' does not occur in train.csv")
        splits[name] = [(root / path, index[label]) for path, label in entries]
    return Dataset(root, "csv", names, splits)
