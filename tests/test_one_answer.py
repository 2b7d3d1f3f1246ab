"""One task, one answer: every method, on a ViT at another size or a CNN at its own, on real photographs.

For each bank: `eval` (evaluate_task), `predict --backend torch`, `predict --backend onnx`, every exported per-task
graph (verified with --verify-data) and the stacked graphs ONNXRuntime serves from (fed the task's tensors from the
bank), the last two read by a small ONNX Runtime + PIL reader written here (not adapterbank's loader). Labels must agree
on >= 99% of images and accuracies within 0.5 points; logits of the graphs within 1e-3 of PyTorch's.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from PIL import Image

from adapterbank import AdapterBankError, TunedModel, create_backbone
from adapterbank.backbones import adapt_input_size
from adapterbank.bank.store import Bank
from adapterbank.bank.torch_bridge import commit, create_bank, load_backbone, task_record
from adapterbank.data.preprocessing import Preprocessing
from adapterbank.evaluation import evaluate_task
from adapterbank.export import VerifyData, export_task, stacked_graph_name
from adapterbank.inspection import perturb_task_parameters
from adapterbank.runtime import ONNXRuntime, TorchRuntime
from adapterbank.runtime.requests import answer, read_requests
from tests.helpers import SHARED_DATA

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data is not present"),
]

IMAGES = 100  # real photographs of TrashNet's test split (6 classes)
VIT, CNN = "test_vit", "test_resnet"  # timm's tiny test architectures: a real VisionTransformer and ResNet
ATTENTION_ONLY = ("prefix", "prompt", "utuning")
METHODS = ("linear", "full", "bitfit", "ssf", "lora", "snell", "adapter", *ATTENTION_ONLY)
OPTIONS = {
    "lora": {"rank": 4},
    "snell": {"rank": 4, "sparsity": 0.5},
    "adapter": {"dim": 4},
    "prefix": {"length": 2},
    "prompt": {"length": 2},
    "utuning": {"prefix_length": 2, "prompt_length": 2, "adapter_dim": 4},
}
# (backbone, size, methods): the ViT at another size than its pretrained one (position embeddings resampled) with
# another mean/std, a resize + centre crop and bilinear interpolation; the CNN at its pretrained size with its own
# preprocessing and a direct resize. Every method is in one case (SSF in both): the promise is of the serving paths
# and the preprocessing, which no method changes; how each method merges on every family is tests/test_export.py's.
CASES = [
    (VIT, 96, ("full", "ssf", "snell", *ATTENTION_ONLY)),
    (CNN, 160, ("linear", "bitfit", "ssf", "lora", "adapter")),
]


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """A VTAB-1k layout task of the first IMAGES test photographs of TrashNet (every split lists them)."""
    source = SHARED_DATA / "vtab-1k" / "trashnet"
    root = tmp_path_factory.mktemp("photos") / "trashnet"
    lines = (source / "test.txt").read_text().splitlines()[:IMAGES]
    for line in lines:
        relative = line.rsplit(" ", 1)[0]
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source / relative, root / relative)
    for split in ("train800", "val200", "train800val200", "test"):
        (root / f"{split}.txt").write_text("\n".join(lines) + "\n")
    shutil.copy(source / "classes.txt", root / "classes.txt")
    return root


def contract_for(bank: Bank, size: int) -> Preprocessing:
    identity = bank.identity
    if size == identity.input_size[-1]:
        return Preprocessing(size, "direct", identity.crop_pct, "bicubic", identity.mean, identity.std)
    other = (0.5, 0.5, 0.5) if identity.mean != (0.5, 0.5, 0.5) else (0.485, 0.456, 0.406)
    return Preprocessing(size, "crop", 0.875, "bilinear", other, (0.25, 0.25, 0.25))


def fit_head(model: TunedModel, images: torch.Tensor, labels: torch.Tensor) -> None:
    """A ridge-regression head on standardised features, so labels depend on the image (a random network's head
    answers one class for everything, which would make agreement vacuous)."""
    head = model.model.get_submodule(model.head_path)
    captured = []
    handle = head.register_forward_pre_hook(lambda _, args: captured.append(args[0].double()))
    with torch.no_grad():
        model(images)
    handle.remove()
    features = captured[0]
    mean, std = features.mean(0), features.std()  # one scale for all features: amplifies no rounding error
    z = (features - mean) / std
    targets = torch.nn.functional.one_hot(labels, head.num_classes[0]).double()
    w = torch.linalg.solve(z.T @ z + 10.0 * torch.eye(z.shape[1], dtype=z.dtype), z.T @ (targets - targets.mean(0)))
    bias = targets.mean(0) - (mean / std) @ w
    weight = (w / std).T
    scale = 5.0 / (features @ weight.T + bias).abs().max()  # logits of a usual size; argmax is unchanged
    with torch.no_grad():
        head.weight[0].copy_(weight * scale)
        head.bias[0].copy_(bias * scale)


def build_bank(
    folder: Path, arch: str, size: int, class_names: list[str], photos: Path, methods: tuple[str, ...] = METHODS
) -> tuple[Bank, Preprocessing]:
    """Tasks of every method that fits the backbone, trained at `size`: task tensors moved off their init, and a
    head fitted on the photographs."""
    torch.manual_seed(0)
    bank = create_bank(folder / "bank", create_backbone(arch), arch, "random-init")
    contract = contract_for(bank, size)
    training = {"preprocessing": contract.to_dict(), "image_size": size, "augment": "none", "eval_split": "test"}
    backbone = load_backbone(bank)
    adapt_input_size(backbone, size)
    lines = (photos / "test.txt").read_text().splitlines()
    transform = contract.eval_transform()
    images = torch.stack([transform(Image.open(photos / ln.rsplit(" ", 1)[0]).convert("RGB")) for ln in lines])
    labels = torch.tensor([int(ln.rsplit(" ", 1)[1]) for ln in lines])
    for i, method in enumerate(methods):
        if arch == CNN and method in ATTENTION_ONLY:
            continue
        base, fingerprint = copy.deepcopy(backbone), bank.identity.fingerprint  # of the weights before resampling
        model = TunedModel(base, arch, method, [len(class_names)], OPTIONS.get(method), fingerprint).eval()
        perturb_task_parameters(model, std=0.01 if method == "full" else 0.05, seed=i)
        fit_head(model, images, labels)
        commit(bank, task_record(model, method, class_names, training=training))
    return bank, contract


def read_images(paths: list[Path], pre: dict) -> np.ndarray:
    """The manifest's steps with PIL and numpy only."""
    size, resample = pre["size"], getattr(Image.Resampling, pre["interpolation"].upper())
    mean, std = np.array(pre["mean"], np.float32), np.array(pre["std"], np.float32)
    out = []
    for path in paths:
        image = Image.open(path).convert("RGB")
        if pre["resize"] == "direct":
            image = image.resize((size, size), resample)
        else:
            w, h, short = image.width, image.height, pre["resize_to"]
            new = (short, int(short * h / w)) if w <= h else (int(short * w / h), short)
            image = image.resize(new, resample)
            top, left = round((new[1] - size) / 2.0), round((new[0] - size) / 2.0)
            image = image.crop((left, top, left + size, top + size))
        x = np.asarray(image, dtype=np.float32) / np.float32(255)
        out.append(((x - mean) / std).transpose(2, 0, 1))
    return np.stack(out)


def run_graph(graph: Path, images: np.ndarray, stacks: dict[str, np.ndarray] | None = None) -> np.ndarray:
    """A graph alone; a stacked graph gets one task's tensors as stacks of one (`stacks`) and task_id 0."""
    session = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    feeds = {"images": images}
    if stacks is not None:
        feeds |= {"task_id": np.zeros(len(images), dtype=np.int64), **stacks}
    return session.run(["logits"], feeds)[0]


def stacks_of(bank: Bank, task: str, manifest: dict) -> dict[str, np.ndarray]:
    """A stacked graph's inputs for one task, from its manifest and the task's tensors in the bank."""
    record = bank.load(task)
    classes = len(record.class_names)
    valid = manifest["head"] + ".valid"
    return {
        name: np.ones((1, classes), dtype=bool) if key == valid else record.tensors[key][None]
        for name, key in manifest["stacks"].items()
    }


def predict(bank: Bank, requests: Path, runtime: TorchRuntime | ONNXRuntime) -> dict[str, list]:
    """What `adapterbank predict REQUESTS --backend torch|onnx` runs, in this process (the CLI around it is
    tested in test_predict.py): answers grouped by task, in input order."""
    by_task: dict[str, list] = {}
    for item in answer(runtime, read_requests(requests), batch_size=64, top_k=1):
        assert not item.error, item.error
        by_task.setdefault(item.task, []).append(item)
    return by_task


def agree(a: np.ndarray, b: np.ndarray, truth: np.ndarray, what: str) -> None:
    assert (a == b).mean() >= 0.99, f"{what}: labels agree on {(a == b).mean():.2%}"
    assert abs((a == truth).mean() - (b == truth).mean()) <= 0.005, what


def test_every_method_is_in_a_case() -> None:
    from adapterbank.methods import METHODS as REGISTERED

    assert sorted({m for _, _, methods in CASES for m in methods}) == sorted(REGISTERED)


@pytest.mark.parametrize(("arch", "size", "methods"), CASES, ids=[arch for arch, _, _ in CASES])
def test_every_serving_path_answers_as_eval(
    arch: str, size: int, methods: tuple[str, ...], photos: Path, tmp_path: Path
) -> None:
    names = (photos / "classes.txt").read_text().split()
    bank, contract = build_bank(tmp_path, arch, size, names, photos, methods)
    lines = (photos / "test.txt").read_text().splitlines()
    paths = [photos / line.rsplit(" ", 1)[0] for line in lines]
    truth = np.array([int(line.rsplit(" ", 1)[1]) for line in lines])
    tasks = bank.tasks()
    # paths relative to the request file, as a user writes them; answers must keep them as written
    written = [str(Path("..") / p.relative_to(photos.parent)) for p in paths]
    requests = photos.parent / f"requests-{arch}-{size}" / "requests.csv"
    requests.parent.mkdir()
    requests.write_text("path,task\n" + "".join(f"{p},{t}\n" for t in tasks for p in written))
    onnx_runtime = ONNXRuntime(bank)
    served = {"torch": predict(bank, requests, TorchRuntime(bank)), "onnx": predict(bank, requests, onnx_runtime)}
    stacked_graphs = {  # the graph each task was served by: one stacked graph per method here
        task: onnx_runtime.cache_dir / f"{stacked_graph_name(bank, bank.load(task, with_tensors=False))}.onnx"
        for task in tasks
        if task not in ("full", "snell")  # both serve through per-task merged graphs
    }
    assert all(graph.is_file() for graph in stacked_graphs.values())
    for task in tasks:
        accuracy = evaluate_task(bank.path, task, photos, "test", workers=0)["accuracy"]
        labels = {b: np.array([a.labels[0] for a in served[b][task]]) for b in served}
        assert [a.path for a in served["onnx"][task]] == written
        assert (labels["torch"] == truth).mean() == pytest.approx(accuracy, abs=1e-12), task  # predict == eval
        assert len(set(labels["torch"].tolist())) > 1, f"{task}: a constant model would make this test vacuous"
        agree(labels["onnx"], labels["torch"], truth, f"{task}: predict onnx")
        # every task exported from the bank, its graph read from its manifest alone
        result = export_task(bank, task, tmp_path / "exports", verify=VerifyData(photos, "test", workers=0))
        manifest = json.loads(result.manifest.read_text())
        assert manifest["preprocessing"] == contract.manifest() and manifest["inputs"]["images"][-1] == size
        verified = manifest["verified"]
        assert verified["n"] == IMAGES and verified["eval_accuracy"] == pytest.approx(accuracy, abs=1e-12)
        assert abs(verified["accuracy"] - accuracy) <= 0.005
        graph_logits = run_graph(result.graph, read_images(paths, manifest["preprocessing"]))
        agree(graph_logits.argmax(-1), labels["torch"], truth, f"{task}: exported graph from its manifest")
        if task in stacked_graphs:
            graph = stacked_graphs[task]
            manifest = json.loads(graph.with_suffix(".json").read_text())
            stacked = run_graph(graph, read_images(paths, contract.manifest()), stacks_of(bank, task, manifest))
            np.testing.assert_allclose(stacked, graph_logits, atol=1e-3, rtol=0)
            agree(stacked.argmax(-1), labels["torch"], truth, f"{task}: stacked graph fed from the bank")


def test_verify_data_refuses_a_manifest_that_misdescribes_preprocessing(photos: Path, tmp_path: Path) -> None:
    """--verify-data preprocesses for the graph from the manifest alone: a wrong mean there is caught."""
    from adapterbank.bank.torch_bridge import load_tasks
    from adapterbank.export import verify_export

    names = (photos / "classes.txt").read_text().split()
    bank, contract = build_bank(tmp_path, CNN, 112, names, photos)
    good = export_task(bank, "ssf", tmp_path / "out", verify=VerifyData(photos, workers=0))
    info = json.loads(good.manifest.read_text())
    info["preprocessing"] = {**info["preprocessing"], "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]}
    model, [record] = load_tasks(bank, ["ssf"])
    verify = VerifyData(photos, workers=0)
    with pytest.raises(AdapterBankError, match="nothing written"):
        verify_export(good.graph, info, model, contract, verify, verify.samples(record))


def test_tasks_of_two_sizes_share_a_vit_bank(photos: Path, tmp_path: Path) -> None:
    """Both runtimes serve tasks trained at different sizes from one bank (grouped by size); a multi-task graph
    holds one size and refuses a mix in one line."""
    from adapterbank.export import export_multi_task

    names = (photos / "classes.txt").read_text().split()
    bank, _ = build_bank(tmp_path / "a", VIT, 96, names, photos, methods=("ssf",))
    other, _ = build_bank(tmp_path / "b", VIT, 160, names, photos, methods=("ssf",))
    commit(bank, dataclasses.replace(other.load("ssf"), name="ssf160"))  # same seed, same backbone fingerprint
    requests = photos.parent / "requests-two-sizes" / "requests.csv"
    requests.parent.mkdir()
    written = [str(Path("..") / p.relative_to(photos.parent)) for p in sorted((photos / "images").rglob("*.jpg"))]
    requests.write_text("path,task\n" + "".join(f"{p},{t}\n" for p in written[:8] for t in ("ssf", "ssf160")))
    torch_answers = predict(bank, requests, TorchRuntime(bank))
    onnx_answers = predict(bank, requests, ONNXRuntime(bank))
    for task in ("ssf", "ssf160"):
        assert [a.labels for a in torch_answers[task]] == [a.labels for a in onnx_answers[task]]
    with pytest.raises(AdapterBankError, match=r"one input size; these tasks differ \(ssf: 96 px, ssf160: 160 px\)"):
        export_multi_task(bank, ["ssf", "ssf160"], "mixed", tmp_path / "out")
