"""The HTTP service's JSON: requests parsed and checked before any work, answers, and errors with a status.

    POST /v1/predict  {"task": NAME, "image": BASE64, "top_k": K}  or  {"instances": [such objects, ...]}
                      -> {"task", "label", "class_name", "score"} (lists when top_k > 1), or {"predictions": [...]}
    GET  /v1/tasks/NAME -> {"name", "method", "classes": [class names], "preprocessing", "metrics"}
    GET  /v1/tasks    -> {"tasks": [{"name", "method", "classes", "version"}, ...]}
    GET  /healthz     -> {"status": "ok"}

Request bodies are untrusted: sizes are bounded before decoding, every field is type-checked, and an error is one
line with a 4xx status.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

from adapterbank.errors import AdapterBankError

MAX_BODY_BYTES = 64 << 20  # a request of many instances; one image's bytes are bounded by the decoder's limits
MAX_INSTANCES = 256
MAX_TOP_K = 1000


class BadRequest(AdapterBankError):
    """A request the service refuses: `status` is its HTTP status (4xx)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class ImageRequest:
    task: str
    image: bytes  # an encoded image file (PNG, JPEG, ...)
    top_k: int


def parse_predict_body(body: bytes) -> tuple[list[ImageRequest], bool]:
    """The requests of a body, and whether it was an `instances` list (then the answer is a list too)."""
    if len(body) > MAX_BODY_BYTES:
        raise BadRequest(f"request body over {MAX_BODY_BYTES >> 20} MiB", 413)
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError, 4300-digit ints, deep nesting
        raise BadRequest(f"the body is not JSON the service can read ({str(exc)[:120]})") from exc
    if not isinstance(payload, dict):
        raise BadRequest('the body must be a JSON object: {"task", "image", "top_k"} or {"instances": [...]}')
    if "instances" not in payload:
        return [_one(payload, "")], False
    instances = payload["instances"]
    if not isinstance(instances, list) or not instances:
        raise BadRequest("'instances' must be a non-empty list of {task, image, top_k} objects")
    if len(instances) > MAX_INSTANCES:
        raise BadRequest(f"at most {MAX_INSTANCES} instances per request, got {len(instances)}", 413)
    return [_one(item, f"instance {i}: ") for i, item in enumerate(instances)], True


def _one(item: Any, where: str) -> ImageRequest:
    if not isinstance(item, dict):
        raise BadRequest(f"{where}must be an object with 'task' and 'image'")
    missing = [key for key in ("task", "image") if key not in item]
    if missing:
        raise BadRequest(f"{where}missing field '{missing[0]}'")
    task, image, top_k = item["task"], item["image"], item.get("top_k", 1)
    if not isinstance(task, str) or not task:
        raise BadRequest(f"{where}'task' must be a task name")
    if not isinstance(image, str):
        raise BadRequest(f"{where}'image' must be the base64 of an encoded image file")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= MAX_TOP_K:
        raise BadRequest(f"{where}'top_k' must be an integer in [1, {MAX_TOP_K}]")
    try:
        data = base64.b64decode(image, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadRequest(f"{where}'image' is not valid base64 ({exc})") from exc
    if not data:
        raise BadRequest(f"{where}'image' is empty")
    return ImageRequest(task, data, top_k)


def prediction_json(
    task: str, top_k: int, labels: list[int], class_names: list[str], scores: list[float]
) -> dict[str, Any]:
    """One answer: scalars when top_k is 1, else lists (of at most the task's class count), best first."""
    if top_k == 1:
        return {"task": task, "label": labels[0], "class_name": class_names[0], "score": scores[0]}
    return {"task": task, "label": labels, "class_name": class_names, "score": scores}
