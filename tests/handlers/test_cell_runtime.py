"""CellRuntime and CellsHandler in-process, on the committed wbc_cells.mar (trained typer, fitted gate)."""

from __future__ import annotations

import base64
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from ts.context import Context, RequestProcessor

from cells.segment import find_cells
from core.cell_answer import ANSWER_KEYS, CELL_KEYS, UNCLASSIFIED, CellAnswer
from core.errors import RequestError
from core.registry import CELL_CLASSES
from core.v2 import image_request, result_body
from handlers.cell_runtime import CellRuntime, restrict_small
from handlers.cells_handler import CellsHandler
from served_model.cell_typer import build_typer_transform, crop_cell, load_typer
from tests.conftest import REPO
from tests.handlers.inputs import bad_cases, count_json_parses, smear_bytes
from training.cell_data import bccd_split, pbc_split

MAR = REPO / "model_store" / "wbc_cells.mar"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    assert MAR.is_file(), "model_store/wbc_cells.mar is part of the product (make archive)"
    out = tmp_path_factory.mktemp("wbc_cells")
    with zipfile.ZipFile(MAR) as z:
        for name in z.namelist():
            if name.startswith("model/") or name == "model_card.json":
                z.extract(name, out)
    return out


@pytest.fixture(scope="module")
def runtime(model_dir: Path) -> CellRuntime:
    return CellRuntime(model_dir)


def _jpeg(path: Path) -> bytes:
    return path.read_bytes()


def test_a_bccd_frame_answers_the_contract(runtime: CellRuntime) -> None:
    _, val = bccd_split()
    frame = next(f for f in val if f.single_type and f.mask is not None)
    body = runtime.analyse({"body": _jpeg(frame.image)})
    assert set(body) == ANSWER_KEYS
    assert body["model"] == "wbc_cells" and body["cells"], body
    width, height = Image.open(frame.image).size
    for cell in body["cells"]:
        assert set(cell) == CELL_KEYS
        x0, y0, x1, y1 = cell["box"]
        assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
        assert sum(cell["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
        assert list(cell["probabilities"]) == list(CELL_CLASSES)
        assert (cell["label"] is None) == cell["abstained"]
        for x, y in cell["nucleus_polygon"] + cell["cell_polygon"]:
            assert 0 <= x <= width and 0 <= y <= height
    assert sum(body["counts"].values()) == len(body["cells"])
    assert body["counts"][UNCLASSIFIED] == sum(c["abstained"] for c in body["cells"])
    assert {"decode", "gate", "segment", "type", "total"} <= set(body["timing_ms"])
    assert "annotated_png" not in body
    text = json.dumps(body)  # the typed contract reads it back as it was written (core.cell_answer.CellAnswer)
    assert json.dumps(CellAnswer.parse(json.loads(text), CELL_CLASSES).to_json()) == text


def test_probabilities_match_an_independent_typer_pass(runtime: CellRuntime, model_dir: Path) -> None:
    """The finder's boxes, cropped and typed outside the runtime, give the runtime's probabilities."""
    _, val = bccd_split()
    raw = _jpeg(val[0].image)
    body = runtime.analyse({"body": raw})
    image = Image.open(io.BytesIO(raw)).convert("RGB")
    found = find_cells(np.asarray(image))
    typer = load_typer(model_dir / "model")
    transform = build_typer_transform(typer.spec)
    x = torch.stack([transform(crop_cell(image, c.box, typer.spec)) for c in found])
    with torch.no_grad():
        ref = torch.softmax(typer(x) / runtime.temperature, dim=-1)
    # a platelet-sized detection is never a white cell: the white types' mass removed (restrict_small)
    classes = list(typer.spec.classes)
    ref = torch.tensor(
        [restrict_small(p, classes) if c.kind == "platelet" else p for c, p in zip(found, ref.tolist(), strict=True)]
    )
    assert any(c.kind == "wbc" for c in found)
    got = torch.tensor([[c["probabilities"][k] for k in CELL_CLASSES] for c in body["cells"]])
    assert got.shape == ref.shape
    assert float((got - ref).abs().max()) <= 1e-4


def test_the_typer_gets_most_validation_frames_right(runtime: CellRuntime) -> None:
    """End to end on BCCD validation frames with one labelled white cell: the largest cell found is that type."""
    _, val = bccd_split()
    frames = [f for f in val if f.single_type][:20]
    hits = 0
    for frame in frames:
        cells = runtime.analyse({"body": _jpeg(frame.image)})["cells"]
        if cells:
            best = max(cells, key=lambda c: c["cell_area_px"])
            hits += max(best["probabilities"], key=best["probabilities"].get) == frame.single_type
    assert hits / len(frames) >= 0.7, f"{hits}/{len(frames)}"


def test_a_single_cell_crop_is_found_and_typed(runtime: CellRuntime) -> None:
    _, val = pbc_split()
    sample = next(s for s in val if s.class_name == "neutrophil")
    cells = runtime.analyse({"body": _jpeg(sample.path)})["cells"]
    assert cells
    h, w = Image.open(sample.path).size[::-1]
    centre = min(
        cells, key=lambda c: abs((c["box"][0] + c["box"][2]) / 2 - w / 2) + abs((c["box"][1] + c["box"][3]) / 2 - h / 2)
    )
    assert max(centre["probabilities"], key=centre["probabilities"].get) == "neutrophil"


def test_annotation_only_when_asked(runtime: CellRuntime) -> None:
    raw = smear_bytes("Pre")
    body = runtime.analyse({"body": raw}, annotate=True)
    png = Image.open(io.BytesIO(base64.b64decode(body["annotated_png"])))
    assert png.format == "PNG" and png.size == Image.open(io.BytesIO(raw)).size
    assert "annotate" in body["timing_ms"]


def test_a_frame_without_white_cells_answers_no_cells(runtime: CellRuntime) -> None:
    """A BCCD field of red cells only (cut away from every WBC box) is a smear with nothing to list."""
    train, _ = bccd_split()
    for frame in train:
        wbc = frame.wbc_boxes
        if len(wbc) == 1 and wbc[0].x0 > 330:
            break
    image = Image.open(frame.image).convert("RGB").crop((0, 0, min(300, wbc[0].x0 - 10), 480))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    body = runtime.analyse({"body": buf.getvalue()})
    assert [c for c in body["cells"] if c["kind"] == "wbc"] == []


@pytest.mark.parametrize("case", bad_cases(), ids=lambda c: c.name)
def test_bad_inputs_get_the_contract_codes(runtime: CellRuntime, case) -> None:
    with pytest.raises(RequestError) as err:
        runtime.analyse(case.row())
    assert err.value.code == case.expected


def test_handler_answers_each_row_with_its_own_status(model_dir: Path) -> None:
    handler = CellsHandler()
    ctx = Context("wbc_cells", str(model_dir), {}, 2, None, "0.12.0")
    handler.initialize(ctx)
    ctx.request_processor = [RequestProcessor({}), RequestProcessor({"annotate": "1"})]
    rows = [{"body": b""}, {"body": smear_bytes("Benign")}]
    out = handler.handle(rows, ctx)
    first, second = (json.loads(o) for o in out)
    assert first["code"] == "bad_request" and ctx.get_response_status(0) == (400, "Bad Request")
    assert "cells" in second and "annotated_png" in second and ctx.get_response_status(1)[0] == 200


def test_handler_parses_each_json_request_once(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The annotate flag, the decoder and the answer's v2 form all read one parse of the body."""
    handler = CellsHandler()
    ctx = Context("wbc_cells", str(model_dir), {}, 1, None, "0.12.0")
    handler.initialize(ctx)
    ctx.request_processor = [RequestProcessor({})]
    text = json.dumps(image_request(smear_bytes("Benign"), {"annotate": True}))
    parsed = count_json_parses(monkeypatch)
    (answer,) = handler.handle([{"body": text.encode()}], ctx)
    assert parsed == [len(text)] and ctx.get_response_status(0)[0] == 200
    assert "annotated_png" in (result_body(json.loads(answer)) or {})


def test_handler_module_defines_exactly_one_class() -> None:
    """TorchServe loads the one class a handler module defines (a second one crash-loops the worker)."""
    import inspect

    import handlers.cells_handler as mod

    assert [n for n, c in inspect.getmembers(mod, inspect.isclass) if c.__module__ == mod.__name__] == ["CellsHandler"]


def test_a_platelet_sized_detection_is_never_a_white_cell() -> None:
    from core.registry import LEUKOCYTE_CLASSES

    classes = list(CELL_CLASSES)
    probs = [0.0] * len(classes)
    probs[classes.index("blast")], probs[classes.index("platelet")] = 0.8, 0.2
    out = restrict_small(probs, classes)
    assert out[classes.index("platelet")] == 1.0 and sum(out) == 1.0
    assert all(out[classes.index(c)] == 0.0 for c in LEUKOCYTE_CLASSES)
    only_white = [1.0 / len(LEUKOCYTE_CLASSES) if c in LEUKOCYTE_CLASSES else 0.0 for c in classes]
    assert restrict_small(only_white, classes)[classes.index("platelet")] == 1.0


def test_a_squashed_224_frame_is_typed_widened_and_answered_in_its_own_pixels(runtime: CellRuntime) -> None:
    from core.aspect import true_shape
    from tests.handlers.inputs import smear_path

    raw = smear_path("Pre").read_bytes()
    body = runtime.analyse({"body": raw})
    image = Image.open(io.BytesIO(raw)).convert("RGB")
    assert image.size == (224, 224)
    widened, scale = true_shape(image)
    found = [c for c in find_cells(np.asarray(widened))]
    assert len(body["cells"]) == len(found) > 0
    for cell, c in zip(body["cells"], found, strict=True):
        x0, y0, x1, y1 = cell["box"]
        assert 0 <= x0 < x1 <= 224 and 0 <= y0 < y1 <= 224
        assert abs(x0 - c.box[0] / scale) <= 1 and abs(x1 - c.box[2] / scale) <= 1 and (y0, y1) == (c.box[1], c.box[3])
