"""core.cell_answer and handlers.annotate: the cell entries, the counts, the annotated image."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from core.cell_answer import ARTEFACT, CELL_COLOURS, CELL_KEYS, UNCLASSIFIED, build_cell, count_cells, counts_of
from core.registry import CELL_CLASSES
from handlers.annotate import annotate, annotated_png_base64
from handlers.cell_runtime import wants_annotation


def _cell(probs: list[float], threshold: float = 0.5) -> dict:
    return build_cell(
        box=[10, 20, 60, 80],
        score=0.9,
        kind="wbc",
        probabilities=probs,
        classes=CELL_CLASSES,
        abstain_threshold=threshold,
        nucleus_polygon=[[20, 30], [40, 30], [40, 60], [20, 60]],
        cell_polygon=[[12, 22], [58, 22], [58, 78], [12, 78]],
        nucleus_area_px=600,
        cell_area_px=2500,
    )


def test_confident_cell_is_labelled_and_unsure_cell_abstains() -> None:
    sure = _cell([0.0, 0.0, 0.0, 0.0, 0.0, 0.05, 0.95, 0.0, 0.0])
    assert set(sure) == CELL_KEYS
    assert sure["label"] == "neutrophil" and not sure["abstained"]
    assert sure["nc_ratio"] == pytest.approx(0.24)
    assert list(sure["probabilities"]) == list(CELL_CLASSES)
    unsure = _cell([0.1, 0.1, 0.1, 0.1, 0.2, 0.2, 0.1, 0.1, 0.0])
    assert unsure["label"] is None and unsure["abstained"]
    assert unsure["confidence"] == pytest.approx(0.2)


def test_wrong_number_of_probabilities_is_a_bug() -> None:
    with pytest.raises(ValueError):
        _cell([1.0])


def test_counts_list_every_class_and_unclassified() -> None:
    counts = count_cells(["neutrophil", None, "neutrophil", "lymphocyte"], CELL_CLASSES)
    assert list(counts) == [*CELL_CLASSES, UNCLASSIFIED]
    assert counts["neutrophil"] == 2 and counts["lymphocyte"] == 1 and counts[UNCLASSIFIED] == 1
    assert sum(counts.values()) == 4
    assert counts_of([], CELL_CLASSES) == dict.fromkeys((*CELL_CLASSES, UNCLASSIFIED), 0)
    with pytest.raises(ValueError, match="myeloma_cell"):
        count_cells(["myeloma_cell"], CELL_CLASSES)


def test_every_label_has_a_colour() -> None:
    assert set(CELL_COLOURS) == {*CELL_CLASSES, UNCLASSIFIED, ARTEFACT}


def test_annotation_draws_in_the_cells_colour_and_keeps_the_size() -> None:
    image = Image.new("RGB", (120, 100), "white")
    cell = _cell([0.0, 0.0, 0.0, 0.0, 0.0, 0.05, 0.95, 0.0, 0.0])
    out = annotate(image, [cell])
    assert out.size == image.size and image.getpixel((10, 50)) == (255, 255, 255)  # the input is untouched
    colour = tuple(int(CELL_COLOURS["neutrophil"][i : i + 2], 16) for i in (1, 3, 5))
    assert out.getpixel((10, 50)) == colour  # the box's left edge
    png = Image.open(io.BytesIO(base64.b64decode(annotated_png_base64(image, [cell]))))
    assert png.format == "PNG" and png.size == image.size


@pytest.mark.parametrize(
    ("row", "header", "explain", "expected"),
    [
        ({"body": b"x"}, "1", "False", True),
        ({"body": b"x"}, None, "True", True),  # /explanations/wbc_cells
        ({"body": {"image": "eA==", "annotate": True}}, None, None, True),
        ({"body": b'{"image": "eA==", "annotate": "yes"}'}, None, None, True),
        ({"body": {"inputs": [], "parameters": {"annotate": 1}}}, None, None, True),
        ({"body": b"x"}, "0", "False", False),
        ({"body": b"x", "annotate": b"1"}, None, None, False),  # TorchServe never builds such a row
        ({"body": b"x"}, None, None, False),
        (b"raw", None, None, False),
    ],
)
def test_annotation_is_asked_by_header_json_field_or_explanations(row, header, explain, expected) -> None:
    assert wants_annotation(row, header, explain) is expected
