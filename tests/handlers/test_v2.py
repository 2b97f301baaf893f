"""core.v2 and handlers.respond: Open Inference Protocol (v2) requests and answers, in-process."""

from __future__ import annotations

import base64
import json

import pytest

from core.decode import extract_payload, request_flag, request_json
from core.errors import ERROR_STATUS, RequestError
from core.v2 import error_code, image_request, result_body, to_v2, v2_error, v2_image, v2_parameters
from handlers.respond import respond
from tests.handlers.inputs import smear_bytes


def _v2(data: object, datatype: str = "BYTES", name: str = "image", **extra: object) -> dict:
    return {"id": "r1", "inputs": [{"name": name, "datatype": datatype, "shape": [1], "data": data}], **extra}


def test_the_image_of_a_v2_request_is_decoded_like_the_json_form() -> None:
    raw = smear_bytes()
    b64 = base64.b64encode(raw).decode()
    assert extract_payload({"body": _v2([b64])}) == raw
    assert extract_payload({"body": json.dumps(_v2([b64])).encode()}) == raw  # bytes as TorchServe may pass
    assert extract_payload({"body": _v2([[b64]])}) == raw  # shape [1, 1]
    assert extract_payload({"body": _v2([b64], name="x")}) == raw  # one BYTES input, any name


@pytest.mark.parametrize(
    ("request_body", "reason"),
    [
        (_v2(["eA==", "eA=="]), "exactly one"),
        (_v2([1]), "exactly one"),
        (_v2(["eA=="], datatype="FP32"), "BYTES"),
        ({"inputs": []}, "one BYTES input"),
        (_v2(["not base64!"]), "not valid base64"),
    ],
)
def test_bad_v2_requests_are_bad_requests(request_body: dict, reason: str) -> None:
    with pytest.raises(RequestError) as err:
        extract_payload({"body": request_body})
    assert err.value.code == "bad_request" and reason in err.value.message


def test_a_frame_answer_in_v2_form() -> None:
    body = {"model": "m", "version": "1.1", "label": "Pre", "probabilities": {"Benign": 0.1, "Pre": 0.9}}
    answer = to_v2(body, {"id": "r1"})
    assert answer["model_name"] == "m" and answer["model_version"] == "1.1" and answer["id"] == "r1"
    outputs = {o["name"]: o for o in answer["outputs"]}
    assert json.loads(outputs["result"]["data"][0]) == body
    assert outputs["probabilities"]["data"] == [0.1, 0.9] and outputs["probabilities"]["shape"] == [1, 2]
    assert outputs["probabilities"]["parameters"]["classes"] == "Benign,Pre"  # v2 parameters are scalars
    assert outputs["label"]["data"] == ["Pre"]
    assert "id" not in to_v2(body, {})


def test_a_cell_answer_in_v2_form() -> None:
    body = {"model": "wbc_cells", "version": "1.0", "cells": [], "counts": {"neutrophil": 2, "unclassified": 1}}
    outputs = {o["name"]: o for o in to_v2(body, {})["outputs"]}
    assert outputs["counts"] == {
        "name": "counts",
        "datatype": "INT64",
        "shape": [2],
        "data": [2, 1],
        "parameters": {"classes": "neutrophil,unclassified"},
    }
    assert "probabilities" not in outputs


class _Context:
    def __init__(self) -> None:
        self.status: dict[int, tuple[int, str]] = {}

    def set_response_content_type(self, idx: int, value: str) -> None:
        pass

    def set_response_status(self, code: int, phrase: str, idx: int) -> None:
        self.status[idx] = (code, phrase)


def test_respond_answers_v2_rows_in_v2_form_and_others_as_before() -> None:
    rows = [{"body": _v2(["eA=="])}, {"body": b"\xff\xd8"}, {"body": _v2(["eA=="])}]
    results: list = [{"model": "m", "version": "1", "counts": {}}, {"model": "m"}, RequestError("bad_request", "no")]
    ctx = _Context()
    first, second, third = (json.loads(o) for o in respond(results, ctx, rows))
    assert first["model_name"] == "m" and first["outputs"][0]["name"] == "result"
    assert second == {"model": "m"}
    assert third == v2_error(RequestError("bad_request", "no")) == {"error": "bad_request: no", "code": "bad_request"}
    assert ctx.status[2][0] == 400
    assert request_json({"body": b"\xff\xd8"}) is None


@pytest.mark.parametrize(
    ("row", "headers", "expected"),
    [
        ({"body": b"\xff\xd8"}, (), False),
        ({"body": b"\xff\xd8"}, ("True",), True),  # TorchServe's explain header on /explanations
        ({"body": b"\xff\xd8"}, (None, "1"), True),
        ({"body": _v2(["eA=="], parameters={"explain": True})}, (), True),
        ({"body": _v2(["eA=="], parameters={"explain": "false"})}, (), False),
        ({"body": _v2(["eA=="], parameters={"annotate": True})}, (), False),  # another flag
        ({"body": json.dumps({"image": "eA==", "explain": "yes"}).encode()}, (), True),
        ({"body": _v2(["eA=="], parameters="explain")}, (), False),  # parameters must be an object
    ],
)
def test_a_request_asks_for_a_flag_by_header_json_field_or_v2_parameter(row, headers, expected) -> None:
    assert request_flag(row, "explain", *headers) is expected


def test_v2_answers_keep_parameter_values_scalar_as_the_protocol_requires() -> None:
    """Open Inference Protocol: a parameter is a string, number or boolean (KServe refuses a list)."""
    frame = {"model": "m", "version": "1", "label": None, "probabilities": {"Benign": 0.6, "Pre": 0.4}}
    cells = {"model": "wbc_cells", "version": "1.0", "cells": [], "counts": {"neutrophil": 2}}
    for answer in (to_v2(frame, {}), to_v2(cells, {})):
        for output in answer["outputs"]:
            for value in (output.get("parameters") or {}).values():
                assert isinstance(value, str | int | float | bool), (output["name"], value)


@pytest.mark.parametrize("code", sorted(ERROR_STATUS))
def test_the_code_of_a_v2_error_survives_a_proxy_that_keeps_only_its_text(code: str) -> None:
    error = v2_error(RequestError(code, "why: because"))
    assert error_code(error) == code
    assert error_code({"error": error["error"]}) == code
    # KServe's model server in front: its own HTTP 500 with the predictor's text inside
    wrapped = f"HTTPStatusError : {error['error']}, '{ERROR_STATUS[code]} X' for url 'http://h/v2/models/m/infer'"
    assert error_code({"error": wrapped}) == code


@pytest.mark.parametrize("error", [{"error": "ValidationError : 4 validation errors"}, {"code": "nope"}, None, "x", {}])
def test_an_error_without_a_contract_code_has_none(error) -> None:
    assert error_code(error) is None


def test_the_request_builder_and_the_answer_reader_meet_the_handler_side() -> None:
    """What a client sends (:func:`image_request`) is what the handler reads, and what it answers
    (:func:`to_v2`) is what a client reads back (:func:`result_body`)."""
    raw = smear_bytes()
    request = image_request(raw, {"explain": True}, "r9")
    assert base64.b64decode(v2_image(request)) == raw and v2_parameters(request) == {"explain": True}
    assert request["id"] == "r9" and "parameters" not in image_request(raw)
    assert extract_payload({"body": json.dumps(request).encode()}) == raw
    body = {"model": "m", "version": "1", "probabilities": {"Benign": 0.7, "Pro": 0.3}, "label": "Benign"}
    assert result_body(to_v2(body, request)) == body


@pytest.mark.parametrize(
    "answer",
    [
        None,
        [],
        {},
        {"outputs": None},
        {"outputs": [{"name": "label", "data": ["x"]}]},
        {"outputs": [{"name": "result", "data": ["not json"]}]},
        {"outputs": [{"name": "result", "data": ["[1]"]}]},
        {"outputs": [{"name": "result", "data": ["{}", "{}"]}]},
    ],
)
def test_an_answer_without_a_result_body_reads_as_none(answer) -> None:
    assert result_body(answer) is None
