"""The Open Inference Protocol (KServe v2) form of a request and of an answer.

Every model also accepts a v2 inference request, so it runs unchanged behind TorchServe's own
``POST /v2/models/{model}/infer``, KServe's v2 endpoint or another v2 server::

    {"id": "r1", "inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["<base64>"]}],
     "parameters": {"annotate": true}}

``"parameters": {"explain": true}`` asks a frame classifier for its Grad-CAM heatmap as well (the
v2 protocol has no explain verb), ``{"annotate": true}`` the cell model for its annotated image.
It answers in v2 form: the contract's body as one JSON string (output ``result``), with the
classifier's probabilities (FP32, ``parameters.classes`` naming the columns, comma-separated: v2
parameter values are strings, numbers or booleans) and label, or the cell model's counts (INT64), as
tensors beside it::

    {"model_name": "...", "model_version": "...", "id": "r1",
     "outputs": [{"name": "result", "datatype": "BYTES", "shape": [1], "data": ["{...}"],
                  "parameters": {"content_type": "application/json"}},
                 {"name": "probabilities", "datatype": "FP32", "shape": [1, 4], "data": [...], ...}, ...]}

A refusal keeps its HTTP status and is the v2 error object, ``{"error": "<code>: <message>", "code":
code}``: the text starts with the contract's code, because a v2 proxy in front (KServe's model server)
passes on only the ``error`` text (in its own HTTP 500); :func:`error_code` reads it back.
"""

from __future__ import annotations

import base64
import json
import re
from typing import Any

from core.errors import ERROR_STATUS, RequestError

__all__ = [
    "INPUT_NAME",
    "image_request",
    "v2_request",
    "v2_image",
    "v2_parameters",
    "to_v2",
    "result_body",
    "v2_error",
    "error_code",
]

_CODE_PREFIX = re.compile(r"(?:^|\s)(" + "|".join(map(re.escape, sorted(ERROR_STATUS))) + r"): ")
#: the name clients give the image tensor (any name is accepted when there is one BYTES input)
INPUT_NAME = "image"


def image_request(
    raw: bytes, parameters: dict[str, Any] | None = None, request_id: str | None = None
) -> dict[str, Any]:
    """The v2 inference request for one image (what :func:`v2_image` reads): a BYTES input named
    :data:`INPUT_NAME` holding ``raw`` in base64, with ``parameters`` (``explain``, ``annotate``) where given."""
    image = {"name": INPUT_NAME, "datatype": "BYTES", "shape": [1], "data": [base64.b64encode(raw).decode("ascii")]}
    request: dict[str, Any] = {"inputs": [image]}
    if request_id is not None:
        request["id"] = request_id
    if parameters:
        request["parameters"] = parameters
    return request


def v2_request(obj: Any) -> dict[str, Any] | None:
    """``obj`` when it is a v2 inference request (a JSON object with an ``inputs`` list), else None."""
    if isinstance(obj, dict) and isinstance(obj.get("inputs"), list):
        return obj
    return None


def v2_image(request: dict[str, Any]) -> str:
    """The base64 string of the request's one image (raises ``bad_request`` with the reason)."""
    inputs = [i for i in request["inputs"] if isinstance(i, dict)]
    named = [i for i in inputs if i.get("name") == INPUT_NAME] or [i for i in inputs if i.get("datatype") == "BYTES"]
    if len(named) != 1:
        raise RequestError("bad_request", f'a v2 request needs one BYTES input named "{INPUT_NAME}"')
    tensor = named[0]
    if tensor.get("datatype") != "BYTES":
        raise RequestError("bad_request", f'v2 input "{tensor.get("name")}" must have datatype BYTES')
    data = tensor.get("data")
    if isinstance(data, list) and len(data) == 1 and isinstance(data[0], list):
        data = data[0]  # shape [1, 1]
    if not isinstance(data, list) or len(data) != 1 or not isinstance(data[0], str):
        raise RequestError("bad_request", "a v2 image input holds exactly one base64 string (shape [1])")
    return data[0]


def v2_parameters(request: dict[str, Any]) -> dict[str, Any]:
    params = request.get("parameters")
    return params if isinstance(params, dict) else {}


def to_v2(body: dict[str, Any], request: dict[str, Any]) -> dict[str, Any]:
    """The v2 answer for the contract's success ``body`` (see the module docstring)."""
    outputs: list[dict[str, Any]] = [
        {
            "name": "result",
            "datatype": "BYTES",
            "shape": [1],
            "data": [json.dumps(body, separators=(",", ":"))],
            "parameters": {"content_type": "application/json"},
        }
    ]
    probs = body.get("probabilities")
    if isinstance(probs, dict) and "cells" not in body:
        outputs.append(
            {
                "name": "probabilities",
                "datatype": "FP32",
                "shape": [1, len(probs)],
                "data": [float(p) for p in probs.values()],
                "parameters": {"classes": ",".join(probs)},
            }
        )
        outputs.append({"name": "label", "datatype": "BYTES", "shape": [1], "data": [body.get("label") or ""]})
    counts = body.get("counts")
    if isinstance(counts, dict):
        outputs.append(
            {
                "name": "counts",
                "datatype": "INT64",
                "shape": [len(counts)],
                "data": [int(n) for n in counts.values()],
                "parameters": {"classes": ",".join(counts)},
            }
        )
    answer: dict[str, Any] = {"model_name": body.get("model"), "model_version": body.get("version"), "outputs": outputs}
    if "id" in request:
        answer["id"] = request["id"]
    return answer


def result_body(answer: Any) -> dict[str, Any] | None:
    """The contract's body a v2 answer carries (its BYTES output ``result``, :func:`to_v2`); None when the
    answer holds none."""
    outputs = answer.get("outputs") if isinstance(answer, dict) else None
    for output in outputs if isinstance(outputs, list) else []:
        if isinstance(output, dict) and output.get("name") == "result":
            data = output.get("data")
            if isinstance(data, list) and len(data) == 1 and isinstance(data[0], str):
                try:
                    result = json.loads(data[0])
                except ValueError:
                    return None
                return result if isinstance(result, dict) else None
    return None


def v2_error(error: RequestError) -> dict[str, Any]:
    return {"error": f"{error.code}: {error.message}", "code": error.code}


def error_code(error: Any) -> str | None:
    """The contract's code of a v2 error (:func:`v2_error`), also where a proxy kept only its text,
    prefixed with its own words (KServe: ``"HTTPStatusError : <code>: <message>, '422 ...' for url ..."``);
    None when it names none."""
    if isinstance(error, dict):
        code = error.get("code")
        if isinstance(code, str) and code in ERROR_STATUS:
            return code
        error = error.get("error")
    if not isinstance(error, str):
        return None
    match = _CODE_PREFIX.search(error)
    return match.group(1) if match else None
