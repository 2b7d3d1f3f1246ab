"""`adapterbank serve` and `predict --engine ray` on a real local Ray: concurrent HTTP clients of several tasks and
methods get what `predict` answers, bad requests get a 4xx without disturbing the others, a commit is served without
a restart, and nothing is left running afterwards; `bench http` on the same. Every test that starts a Ray is in this
module, so that parallel test processes (one module each) never start two at once."""

from __future__ import annotations

import base64
import copy
import csv
import io
import json
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from adapterbank import TunedModel, create_backbone
from adapterbank.bank.store import Bank
from adapterbank.bank.torch_bridge import commit, create_bank, load_backbone, task_record
from adapterbank.benchmarks.http import free_port
from adapterbank.inspection import perturb_task_parameters
from adapterbank.runtime import TorchRuntime
from adapterbank.runtime.requests import Request, answer
from adapterbank.service.bank_service import BankService, ServiceOptions
from adapterbank.service.protocol import MAX_INSTANCES, BadRequest, ImageRequest, parse_predict_body
from tests.helpers import REPO, run_cli

TASKS = {"ssf": ("ssf", None), "lora": ("lora", {"rank": 4}), "snell": ("snell", {"rank": 4, "sparsity": 0.5})}
TASKS["prefix"] = ("prefix", {"length": 2})


def write_photos(folder: Path) -> list[Path]:
    """Eight smooth colour images of several sizes and shapes, as JPEG and PNG files."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (width, height) in enumerate([(64, 64), (80, 48), (40, 90), (120, 120)] * 2):
        small = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
        image = Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC)
        paths.append(folder / f"photo{i}.{'jpg' if i % 2 else 'png'}")
        image.save(paths[-1])
    return paths


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return write_photos(tmp_path_factory.mktemp("photos"))


def add_task(bank: Bank, name: str, method: str, options: dict | None, seed: int, training: dict | None = None) -> None:
    """A task of `method` whose tensors (head included) are moved off their init, so answers depend on it."""
    torch.manual_seed(seed)
    model = TunedModel(copy.deepcopy(load_backbone(bank)), "test_vit", method, [3 + seed % 3], options,
                       bank.identity.fingerprint).eval()  # fmt: skip
    perturb_task_parameters(model, std=0.5, seed=seed)
    commit(bank, task_record(model, name, [f"{name}-class{j}" for j in range(3 + seed % 3)], training=training))


def make_bank(folder: Path, broken: bool = False) -> Bank:
    """The TASKS; with `broken`, also a task file that is not HDF5 (listed with its error, refused when asked)."""
    torch.manual_seed(0)
    bank = create_bank(folder, create_backbone("test_vit"), "test_vit", "random-init")
    for seed, (name, (method, options)) in enumerate(TASKS.items()):
        add_task(bank, name, method, options, seed)
    if broken:
        bank.task_file("broken").write_bytes(b"not a task")
    return bank


def encoded(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def local_answers(bank: Bank, pairs: list[tuple[Path, str]], top_k: int = 1) -> list[Any]:
    """What `adapterbank predict` answers for these (image, task) pairs."""
    requests = [Request(str(path), path, task) for path, task in pairs]
    return list(answer(TorchRuntime(bank), requests, batch_size=64, top_k=top_k))


# --- the request protocol, without Ray -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        (b"{not json", 400, "not JSON"),
        (b"[1, 2]", 400, "must be a JSON object"),
        (json.dumps({"image": "aGk="}).encode(), 400, "missing field 'task'"),
        (json.dumps({"task": "t"}).encode(), 400, "missing field 'image'"),
        (json.dumps({"task": 3, "image": "aGk="}).encode(), 400, "'task' must be a task name"),
        (json.dumps({"task": "t", "image": "@@@"}).encode(), 400, "not valid base64"),
        (json.dumps({"task": "t", "image": ""}).encode(), 400, "'image' is empty"),
        (json.dumps({"task": "t", "image": "aGk=", "top_k": 0}).encode(), 400, "'top_k' must be an integer"),
        (json.dumps({"task": "t", "image": "aGk=", "top_k": True}).encode(), 400, "'top_k' must be an integer"),
        (json.dumps({"instances": []}).encode(), 400, "non-empty list"),
        (json.dumps({"instances": [{"task": "t", "image": "aGk="}, 5]}).encode(), 400, "instance 1: must be an"),
        (json.dumps({"instances": [{"task": "t", "image": "aGk="}] * (MAX_INSTANCES + 1)}).encode(), 413, "at most"),
        (b"[" * 100_000, 400, "not JSON the service can read"),  # nesting deeper than the parser's recursion
        (b'{"task": "t", "image": "aGk=", "top_k": ' + b"9" * 5000 + b"}", 400, "not JSON the service can read"),
    ],
)
def test_bad_bodies_are_refused_with_their_status(body: bytes, status: int, fragment: str) -> None:
    with pytest.raises(BadRequest, match=fragment) as caught:
        parse_predict_body(body)
    assert caught.value.status == status and "\n" not in str(caught.value)


def test_good_bodies_parse() -> None:
    one, listed = parse_predict_body(json.dumps({"task": "a", "image": "aGk=", "top_k": 2}).encode())
    assert one == [ImageRequest("a", b"hi", 2)] and not listed
    many, listed = parse_predict_body(json.dumps({"instances": [{"task": "a", "image": "aGk="}] * 3}).encode())
    assert len(many) == 3 and listed and many[0].top_k == 1


def test_the_service_answers_what_predict_answers_and_serves_commits(tmp_path: Path, photos: list[Path]) -> None:
    """BankService directly: mixed batches and one-task-at-a-time batches equal predict; a replaced task is served
    from the next batch on; an unknown task and an undecodable image are refused before any batch; a broken task and
    an image its task cannot resize fail inside a batch without touching the other requests."""
    bank = make_bank(tmp_path / "bank", broken=True)
    pairs = [(photo, task) for photo in photos[:4] for task in TASKS]
    expected = local_answers(bank, pairs, top_k=2)
    requests = [ImageRequest(task, photo.read_bytes(), 2) for photo, task in pairs]
    for cross_task in (True, False):
        service = BankService(bank.path, ServiceOptions(cross_task=cross_task))
        got = service.answer([service.check(r) for r in requests])
        assert [(p.labels, p.class_names, p.error) for p in got] == [
            (a.labels, a.class_names, a.error) for a in expected
        ]
        for p, a in zip(got, expected, strict=True):
            assert p.scores == pytest.approx(a.scores, abs=1e-6)
    before = service.answer([service.check(requests[0])])[0]
    add_task(bank, "ssf", "ssf", None, seed=7)  # a new version of 'ssf' with another head and class names
    after = service.answer([service.check(requests[0])])[0]
    assert after.class_names[0].startswith("ssf-class") and after != before
    assert after.labels == local_answers(bank, [pairs[0]], top_k=2)[0].labels
    with pytest.raises(BadRequest, match="unknown task 'nope'") as caught:
        service.check(ImageRequest("nope", photos[0].read_bytes(), 1))
    assert caught.value.status == 404
    with pytest.raises(BadRequest, match="cannot read image from the request") as caught:
        service.check(ImageRequest("ssf", b"not an image", 1))
    assert caught.value.status == 400 and "BytesIO" not in str(caught.value)
    add_task(bank, "crop", "ssf", None, seed=3, training={"augment": "fgvc"})  # resize the short side, crop
    thin = io.BytesIO()
    Image.new("RGB", (2, 60_000)).save(thin, format="PNG")  # small file; resized to 256 px wide it would be huge
    mixed = [ImageRequest("broken", requests[0].image, 1), ImageRequest("crop", thin.getvalue(), 1), requests[1]]
    got = service.answer([service.check(r) for r in mixed])
    assert "broken" in got[0].error and "too elongated" in got[1].error and not got[2].error
    assert got[2].labels == expected[1].labels
    assert service.describe("crop")["preprocessing"]["resize"] == "crop" and "data" not in service.describe("crop")


# --- a real local Ray -------------------------------------------------------------------------------------------


def ray_processes() -> set[int]:
    pattern = "raylet|gcs_server|ray::|default_worker.py|dashboard"
    found = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout.split()
    return {int(pid) for pid in found}


def assert_ray_gone(before: set[int]) -> None:
    """Every Ray process started since `before` exits within 30 s (workers finish their shutdown after the driver)."""
    deadline = time.monotonic() + 30
    while ray_processes() - before and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not ray_processes() - before, "Ray processes outlived the command that started them"


def post(url: str, body: bytes | dict, timeout: float = 60) -> tuple[int, Any]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=60) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Bank]]:
    """`adapterbank serve` as a user starts it (its own local Ray), stopped by Ctrl-C (SIGINT) at the end."""
    before = ray_processes()
    bank = make_bank(tmp_path_factory.mktemp("served") / "bank", broken=True)
    port = free_port()
    args = ["--bank", str(bank.path), "--port", str(port), "--max-batch", "16", "--batch-wait-ms", "20"]
    server = subprocess.Popen(
        [sys.executable, "-m", "cli", "serve", *args, "--num-cpus", "2"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and server.poll() is None:
            try:
                if get(f"{url}/healthz") == {"status": "ok"}:
                    break
            except OSError:
                time.sleep(1)
        assert server.poll() is None, server.communicate()[1][-2000:]
        yield url, bank
    finally:
        server.send_signal(signal.SIGINT)
        out, err = server.communicate(timeout=120)
        assert server.returncode == 0, err[-2000:]
        assert f"at {url}" in out and "Traceback" not in err
        assert_ray_gone(before)


@pytest.mark.slow
def test_concurrent_clients_of_many_tasks_get_predicts_answers(served: tuple[str, Bank], photos: list[Path]) -> None:
    url, bank = served
    assert get(f"{url}/healthz") == {"status": "ok"}
    listed = {t["name"]: t for t in get(f"{url}/v1/tasks")["tasks"]}
    assert set(listed) == {*TASKS, "broken"} and listed["lora"]["method"] == "lora" and listed["lora"]["version"]
    assert listed["broken"]["error"] and "error" not in listed["lora"]
    assert get(f"{url}/v1/tasks/snell")["classes"] == bank.describe("snell").class_names
    for name, status in (("nope", 404), ("broken", 422), ("..", 404)):
        with pytest.raises(urllib.error.HTTPError) as caught:
            get(f"{url}/v1/tasks/{name}")
        assert caught.value.code == status and set(json.loads(caught.value.read())) == {"error"}
    pairs = [(photo, task) for photo in photos for task in TASKS]
    expected = {(str(p), t): a for (p, t), a in zip(pairs, local_answers(bank, pairs, top_k=3), strict=True)}
    results: dict[tuple[str, str], Any] = {}
    bad: list[tuple[int, Any]] = []
    hostile = [
        {"task": "nosuch", "image": encoded(photos[0])},
        {"task": "ssf", "image": base64.b64encode(b"GIF89a-truncated").decode()},
        {"task": "ssf"},
        b"{broken",
        {"instances": [{"task": "lora", "image": encoded(photos[0])}, {"task": "gone", "image": encoded(photos[0])}]},
        {"task": "broken", "image": encoded(photos[1])},  # refused inside a batch, beside the good requests
    ]

    def client(index: int) -> None:
        mine = pairs[index::6]
        for photo, task in mine[: len(mine) // 2]:  # single requests
            status, body = post(f"{url}/v1/predict", {"task": task, "image": encoded(photo), "top_k": 3})
            results[(str(photo), task)] = (status, body)
        rest = mine[len(mine) // 2 :]  # the rest as one `instances` request
        status, body = post(
            f"{url}/v1/predict", {"instances": [{"task": t, "image": encoded(p), "top_k": 3} for p, t in rest]}
        )
        for (photo, task), one in zip(rest, body["predictions"], strict=True):
            results[(str(photo), task)] = (status, one)
        for body in hostile[index % len(hostile) :: 6] if index < len(hostile) else []:
            bad.append(post(f"{url}/v1/predict", body))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not any(thread.is_alive() for thread in threads)
    assert len(results) == len(pairs)
    for key, (status, body) in results.items():
        want = expected[key]
        assert status == 200, body
        assert (body["task"], body["label"], body["class_name"]) == (key[1], want.labels, want.class_names)
        # scores agree to rounding: batches of another composition sum in another order (or take the merged path)
        assert body["score"] == pytest.approx(want.scores, abs=1e-4)
    assert sorted(status for status, _ in bad) == [400, 400, 400, 404, 404, 422]
    assert all(set(body) == {"error"} and "\n" not in body["error"] for _, body in bad)


@pytest.mark.slow
def test_a_commit_is_served_without_a_restart(served: tuple[str, Bank], photos: list[Path]) -> None:
    url, bank = served
    image = encoded(photos[0])
    status, body = post(f"{url}/v1/predict", {"task": "fresh", "image": image})
    assert status == 404
    add_task(bank, "fresh", "lora", {"rank": 4}, seed=11)
    status, body = post(f"{url}/v1/predict", {"task": "fresh", "image": image})
    assert status == 200 and body["class_name"].startswith("fresh-class"), body
    add_task(bank, "fresh", "ssf", None, seed=13)  # replaced: another method, another class count
    want = local_answers(bank, [(photos[0], "fresh")])[0]
    status, body = post(f"{url}/v1/predict", {"task": "fresh", "image": image})
    assert status == 200 and (body["label"], body["class_name"]) == (want.labels[0], want.class_names[0])
    assert "fresh" in {t["name"] for t in get(f"{url}/v1/tasks")["tasks"]}


@pytest.mark.slow
def test_predict_on_ray_equals_local_predict(tmp_path: Path, photos: list[Path]) -> None:
    """The CLI as a user runs it: a Ray Data job on a local Ray, the same CSV out, rows in input order."""
    bank = make_bank(tmp_path / "bank")
    rows = [f"{photo},{task}" for photo in photos for task in TASKS] + [f"{photos[0]},nosuch"]
    requests = tmp_path / "requests.csv"
    requests.write_text("path,task\n" + "\n".join(rows) + "\n")
    before = ray_processes()
    outputs = {}
    for engine in ("local", "ray"):
        out = tmp_path / f"{engine}.csv"
        args = ["predict", str(requests), "--bank", str(bank.path), "--out", str(out), "--engine", engine]
        result = run_cli(*args, "--top-k", "2", "--batch-size", "8")
        assert result.returncode == 1 and "1 of 33 requests failed" in result.stderr, result.stderr[-1500:]
        outputs[engine] = list(csv.DictReader(io.StringIO(out.read_text())))
    exact = ("path", "task", "label", "class_name", "error")
    assert [[row[k] for k in exact] for row in outputs["ray"]] == [[row[k] for k in exact] for row in outputs["local"]]
    for ray_row, local_row in zip(outputs["ray"], outputs["local"], strict=True):  # thread counts differ: rounding
        ray_scores, local_scores = (
            np.array([float(v) for v in r["score"].split(";") if v]) for r in (ray_row, local_row)
        )
        np.testing.assert_allclose(ray_scores, local_scores, atol=1e-5)
    assert [row["task"] for row in outputs["ray"]] == [row.split(",")[1] for row in rows]
    assert_ray_gone(before)


@pytest.mark.slow
def test_bench_http_runs() -> None:
    """Both modes on a real local Ray, side by side, and the Markdown rows the README's table is made of."""
    args = ["bench", "http", "--backbone", "convnext_atto", "--checkpoint", "none", "--tasks", "2"]
    result = run_cli(*args, "--clients", "1,3", "--seconds", "1", "--image-size", "32", "--markdown")
    assert result.returncode == 0, result.stderr[-1500:]
    rows = [
        line.split("|")[1:-1]
        for line in result.stdout.splitlines()
        if line.startswith("| 1 ") or line.startswith("| 3 ")
    ]
    assert [int(r[0]) for r in rows] == [1, 3]
    assert all(float(r[1]) > 0 and float(r[2]) > 0 and r[3].strip().endswith("x") for r in rows)
