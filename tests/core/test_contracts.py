"""The typed answer contracts (core.prediction.FramePrediction, core.cell_answer.CellAnswer): built, written
as exactly the JSON of docs/guides/serving.md (golden bodies written by the dict builders before the types), read
back, and refused with a message naming the field when an answer breaks the contract."""

from __future__ import annotations

import json
from typing import Any

import pytest

from core.cell_answer import Cell, CellAnswer, build_cell
from core.contract import ContractError
from core.errors import RequestError
from core.prediction import NOTICE, Explanation, FramePrediction, build_prediction
from core.registry import CELL_CLASSES, CLASS_NAMES

COMMON: dict[str, Any] = {"classes": CLASS_NAMES, "model": "m", "version": "1.0", "abstain_threshold": 0.6}
_NOTICE = json.dumps(NOTICE)
#: the bodies core.prediction.build_prediction wrote before the types (commit 2e6c508), compact JSON
GOLDEN_FRAMES = [
    (
        {"probabilities": [0.01, 0.02, 0.95, 0.02]},
        '{"model":"m","version":"1.0","label":"Pre","class_index":2,"confidence":0.95,"probabilities":{"Benign":0.01,'
        '"Early":0.02,"Pre":0.95,"Pro":0.02},"malignant_probability":0.99,"abstained":false,"abstain_reason":null,'
        '"abstain_threshold":0.6,"benign_threshold":null,"quality":{},"timing_ms":{},"notice":' + _NOTICE + "}",
    ),
    (
        {"probabilities": [0.3, 0.3, 0.2, 0.2]},
        '{"model":"m","version":"1.0","label":null,"class_index":null,"confidence":0.3,"probabilities":{"Benign":0.3,'
        '"Early":0.3,"Pre":0.2,"Pro":0.2},"malignant_probability":0.7,"abstained":true,"abstain_reason":'
        '"low_confidence","abstain_threshold":0.6,"benign_threshold":null,"quality":{},"timing_ms":{},"notice":'
        + _NOTICE
        + ',"message":"Confidence under the model\'s threshold: refer for manual review."}',
    ),
    (
        {"probabilities": [0.9, 0.05, 0.03, 0.02], "benign_threshold": 0.95},
        '{"model":"m","version":"1.0","label":null,"class_index":null,"confidence":0.9,"probabilities":{"Benign":0.9,'
        '"Early":0.05,"Pre":0.03,"Pro":0.02},"malignant_probability":0.09999999999999998,"abstained":true,'
        '"abstain_reason":"benign_not_confirmed","abstain_threshold":0.6,"benign_threshold":0.95,"quality":{},'
        '"timing_ms":{},"notice":' + _NOTICE + ',"message":"Most probably Benign, but P(Benign) is under the '
        'threshold that no malignant validation frame exceeded: Benign not confirmed, refer for manual review."}',
    ),
    (
        {
            "probabilities": [0.1, 0.8, 0.05, 0.05],
            "out_of_distribution": True,
            "quality": {"is_blood_smear": True, "ood_score": 3.2},
            "timing_ms": {"decode": 1.23456, "inference": 7},
        },
        '{"model":"m","version":"1.0","label":null,"class_index":null,"confidence":0.8,"probabilities":{"Benign":0.1,'
        '"Early":0.8,"Pre":0.05,"Pro":0.05},"malignant_probability":0.9,"abstained":true,"abstain_reason":'
        '"out_of_distribution","abstain_threshold":0.6,"benign_threshold":null,"quality":{"is_blood_smear":true,'
        '"ood_score":3.2},"timing_ms":{"decode":1.235,"inference":7.0},"notice":' + _NOTICE + ',"message":"The image '
        "is unlike the images the model learned from (out of distribution: another lab, stain, camera or "
        'magnification?): no label, refer for manual review."}',
    ),
]
CELL_KW: dict[str, Any] = {
    "box": [1, 2, 30, 40],
    "score": 0.912345,
    "kind": "wbc",
    "probabilities": [0.1] * 8 + [0.2],
    "classes": CELL_CLASSES,
    "abstain_threshold": 0.5,
    "nucleus_polygon": [[1, 2], [3, 4]],
    "cell_polygon": [[1.0, 2.0], [5, 6]],
    "nucleus_area_px": 10,
    "cell_area_px": 30,
}
GOLDEN_CELL = (
    '{"box":[1,2,30,40],"score":0.9123,"kind":"wbc","label":null,"confidence":0.2,"probabilities":{"basophil":0.1,'
    '"eosinophil":0.1,"erythroblast":0.1,"ig":0.1,"lymphocyte":0.1,"monocyte":0.1,"neutrophil":0.1,"platelet":0.1,'
    '"blast":0.2},"abstained":true,"nucleus_polygon":[[1,2],[3,4]],"cell_polygon":[[1,2],[5,6]],"nucleus_area_px":10,'
    '"cell_area_px":30,"nc_ratio":0.3333}'
)


def _compact(body: Any) -> str:
    return json.dumps(body, separators=(",", ":"))


@pytest.mark.parametrize(("kwargs", "golden"), GOLDEN_FRAMES, ids=["answer", "low", "benign", "ood"])
def test_frame_prediction_writes_the_contract_byte_for_byte_and_reads_it_back(kwargs: Any, golden: str) -> None:
    prediction = FramePrediction.build(**COMMON, **kwargs)
    assert _compact(prediction.to_json()) == golden
    assert _compact(build_prediction(**COMMON, **kwargs)) == golden
    parsed = FramePrediction.parse(json.loads(golden), CLASS_NAMES)
    assert parsed == prediction and _compact(parsed.to_json()) == golden


def test_handler_fields_and_explanation_come_after_the_body_in_the_handlers_order() -> None:
    prediction = FramePrediction.build([0.01, 0.02, 0.95, 0.02], **COMMON, timing_ms={"decode": 1.0})
    prediction.explanation = Explanation("Pre", "grad-cam", "forward_cnn", [2, 2], [[0.0, 1.0], [0.5, 0.2]], "iVBO")
    prediction.batch_size, prediction.runtime = 1, "eager"
    body = prediction.to_json()
    assert list(body)[-8:] == [
        "explained_class",
        "method",
        "layer",
        "grid",
        "grid_shape",
        "overlay_png_base64",
        "batch_size",
        "runtime",
    ]
    assert FramePrediction.parse(json.loads(json.dumps(body))) == prediction
    # the portal keeps the overlay's bytes and drops the grid: what is left still reads
    body.pop("grid"), body.pop("overlay_png_base64")
    explanation = FramePrediction.parse(body).explanation
    assert explanation is not None and explanation.grid is None and explanation.explained_class == "Pre"
    assert "grid" not in FramePrediction.parse(body).to_json()


def _frame() -> dict[str, Any]:
    return FramePrediction.build([0.01, 0.02, 0.95, 0.02], **COMMON).to_json()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"probabilities": None}, "answer.probabilities should be a JSON object"),
        ({"confidence": "high"}, "'confidence' should be a finite number, not str"),
        ({"confidence": float("nan")}, "'confidence' should be a finite number"),
        ({"abstained": 1}, "'abstained' should be true or false"),
        ({"label": "Myeloma"}, "label 'Myeloma' is not one of"),
        ({"abstained": True}, "an abstention has no label and a reason"),
        ({"label": None, "class_index": None, "abstained": True, "abstain_reason": "tired"}, "unknown abstain_reason"),
        ({"timing_ms": {"total": "1"}}, "answer.timing_ms: 'total' should be a finite number"),
        ({"probabilities": {"Benign": 0.5, "Other": 0.5}}, "'probabilities' names"),
        ({"grid_shape": [2, 2], "explained_class": "Pre", "method": "grad-cam"}, "'layer' is missing"),
    ],
)
def test_a_malformed_frame_answer_is_refused_naming_the_field(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ContractError, match=message.replace("(", r"\(").replace("?", r"\?")):
        FramePrediction.parse({**_frame(), **change}, CLASS_NAMES)


@pytest.mark.parametrize("key", ["model", "version", "abstain_threshold", "benign_threshold", "quality", "notice"])
def test_a_frame_answer_missing_a_key_is_refused(key: str) -> None:
    body = _frame()
    del body[key]
    with pytest.raises(ContractError, match=f"'{key}' is missing"):
        FramePrediction.parse(body)


def test_unknown_keys_are_ignored_and_a_non_object_is_refused() -> None:
    assert FramePrediction.parse({**_frame(), "future_field": 1}).label == "Pre"
    with pytest.raises(ContractError, match="answer should be a JSON object, not list"):
        FramePrediction.parse([])


def _cell_answer(**cell: Any) -> dict[str, Any]:
    answer = CellAnswer.build(
        model="wbc_cells",
        version="2.0",
        cells=[Cell.build(**CELL_KW), Cell.build(**{**CELL_KW, "probabilities": [0.9] + [0.0125] * 8})],
        classes=CELL_CLASSES,
        abstain_threshold=0.5,
        quality={"is_blood_smear": True},
        notice=NOTICE,
    )
    answer.timing_ms = {"decode": 1.0, "total": 2.0}
    body = answer.to_json()
    body["cells"][0].update(cell)
    return body


def test_cell_answer_writes_the_contract_byte_for_byte_and_reads_it_back() -> None:
    assert _compact(Cell.build(**CELL_KW).to_json()) == GOLDEN_CELL == _compact(build_cell(**CELL_KW))
    body = _cell_answer()
    assert list(body) == ["model", "version", "cells", "counts", "abstain_threshold", "quality", "notice", "timing_ms"]
    assert body["counts"] == {**dict.fromkeys(CELL_CLASSES, 0), "basophil": 1, "unclassified": 1}
    parsed = CellAnswer.parse(json.loads(json.dumps(body)), CELL_CLASSES)
    assert parsed.to_json() == body and parsed.cells[1].label == "basophil"
    parsed.annotated_png = "iVBO"
    assert list(parsed.to_json())[-2:] == ["annotated_png", "timing_ms"]
    assert CellAnswer.parse(parsed.to_json()) == parsed


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"box": [10, 0, 5, 5]}, r"cell 0: box \[10, 0, 5, 5\] is not \[x0, y0, x1, y1\]"),
        ({"box": [0, 0, 5]}, "cell 0: 'box' should hold 4 integers"),
        ({"label": "myeloblast", "abstained": False}, "cell 0: unknown type 'myeloblast'"),
        ({"probabilities": {"myeloblast": 1.0}}, r"unknown types in probabilities \['myeloblast'\]"),
        ({"cell_polygon": [[1, 2, 3]]}, r"cell 0.cell_polygon\[0\] should be an \[x, y\] pair"),
        ({"kind": None}, "cell 0: 'kind' should be a string"),
        ({"abstained": False}, "cell 0: abstained False with label None"),
    ],
)
def test_a_malformed_cell_is_refused_naming_the_cell_and_field(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ContractError, match=message):
        CellAnswer.parse(_cell_answer(**change), CELL_CLASSES)


def test_a_cell_answer_without_cells_or_with_bad_counts_is_refused() -> None:
    with pytest.raises(ContractError, match="'cells' should be a list"):
        CellAnswer.parse({**_cell_answer(), "cells": None})
    with pytest.raises(ContractError, match="non-negative integer"):
        CellAnswer.parse({**_cell_answer(), "counts": {"blast": -1}})
    assert issubclass(ContractError, ValueError)  # the portal's handlers of ValueError still catch it


def test_numbers_are_read_as_sent_so_the_json_writes_back_the_same() -> None:
    body = {**_frame(), "confidence": 1, "timing_ms": {"total": 3}}
    assert _compact(FramePrediction.parse(body).to_json()) == _compact(body)


def test_a_refusal_is_written_and_read_back_and_a_malformed_one_is_refused() -> None:
    refusal = RequestError("not_a_blood_smear", "not a smear", score=0.1, threshold=0.5)
    again = RequestError.from_json(json.loads(json.dumps(refusal.to_dict())))
    assert (again.code, again.message, again.details, again.status) == (
        refusal.code,
        "not a smear",
        refusal.details,
        422,
    )
    for bad in ({"code": "teapot", "message": "x"}, {"code": "bad_request"}, ["bad_request"]):
        with pytest.raises(ValueError):
            RequestError.from_json(bad)
