"""The lab's confirmed data from sign-offs, exported as a versioned, de-identified dataset (``make dataset``).

What goes in: every signed-off image with the reviewer's final label, and every cell of a signed-off frame
whose type the sign-off confirmed (the model's type where the technologist left it, the technologist's
reclassification, or "artefact"). Cells the model abstained on and nobody typed carry no label and are left
out. Nothing else: no patient, no MRN, no accession, no original file name. A specimen is named by a keyed
hash (HMAC-SHA256 of its id under the portal's SECRET_KEY, 16 hex digits): stable across exports of the same
portal, meaningless outside it.

Layout of ``<out>/<dataset id>/``::

    files/<sha256>.<ext>     each image once, by the SHA-256 of its bytes (checked against the upload's)
    manifest.json            provenance per record: specimen key, split side, final label, decision,
                             reviewer, signed at, the models and versions that saw it (cells: box, the
                             model's and the final type)
    SHA256SUMS               the files' hashes (``sha256sum -c``)

The dataset id is ``lab-<first 12 hex of the SHA-256 of its records>``: the same sign-offs give the same id,
one more sign-off a new one; ``<out>/LATEST`` names the newest export.

Split: a specimen's side is fixed by its key (``test`` when the key's first 8 hex digits, as a fraction of
2^32, fall under ``test_fraction``), so every image and cell of a specimen is on one side, and a specimen
never changes side as the lab signs off more: the test side can enter the locked test set once, and the
training side never touches it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import mimetypes
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from django.conf import settings
from django.utils import timezone

from core.cell_answer import ARTEFACT, UNCLASSIFIED
from portal.analyses import storage
from portal.analyses.models import Cell, ImageReview

__all__ = ["DEFAULT_TEST_FRACTION", "DatasetError", "export", "side_of", "specimen_key"]

DEFAULT_TEST_FRACTION = 0.2
SCHEMA = 1


class DatasetError(RuntimeError):
    """A stored image is missing or does not match its recorded hash: nothing was exported."""


def specimen_key(specimen_id: int) -> str:
    """The specimen's pseudonym (keyed hash of its id; no identifier of the patient goes into it)."""
    digest = hmac.new(settings.SECRET_KEY.encode(), f"specimen:{specimen_id}".encode(), hashlib.sha256)
    return digest.hexdigest()[:16]


def side_of(key: str, test_fraction: float = DEFAULT_TEST_FRACTION) -> str:
    return "test" if int(key[:8], 16) / 2**32 < test_fraction else "train"


def _extension(content_type: str, fallback: str) -> str:
    ext = mimetypes.guess_extension(content_type) or fallback
    return {".jpe": ".jpg", ".jpeg": ".jpg", ".tif": ".tiff"}.get(ext, ext)


def _image_records(reviews: Iterable[ImageReview], test_fraction: float) -> list[dict[str, Any]]:
    records = []
    for review in reviews:
        image = review.image
        key = specimen_key(image.specimen_id)
        seen = {
            a.model_name: a.model_version for a in image.analyses.all() if a.model_version and a.status == a.Status.DONE
        }
        for model, answer in (review.evidence or {}).items():  # the answers the reviewer saw
            if isinstance(answer, dict) and answer.get("version"):
                seen.setdefault(model, str(answer["version"]))
        records.append(
            {
                "sha256": image.sha256,
                "file": f"files/{image.sha256}{_extension(image.content_type, '.bin')}",
                "width": image.width,
                "height": image.height,
                "specimen": key,
                "side": side_of(key, test_fraction),
                "label": review.final_label,
                "decision": review.decision,
                "consensus_label": review.consensus_label,
                "reviewer": review.reviewer_name,
                "signed_at": review.signed_at.isoformat(),
                "model_versions": dict(sorted(seen.items())),
            }
        )
    return records


def _cell_records(reviews: Iterable[ImageReview], test_fraction: float) -> list[dict[str, Any]]:
    by_image = {r.image_id: r for r in reviews}
    cells = (
        Cell.objects.filter(image_id__in=by_image)
        .select_related("cell_analysis", "image")
        .order_by("image_id", "index")
    )
    records = []
    for cell in cells:
        final = cell.final_label
        if final == UNCLASSIFIED:
            continue  # abstained and nobody typed it: no confirmed label
        review = by_image[cell.image_id]
        key = specimen_key(cell.image.specimen_id)
        decision = "artefact" if final == ARTEFACT else ("reclassified" if cell.reviewed_label else "confirmed")
        records.append(
            {
                "image_sha256": cell.image.sha256,
                "index": cell.index,
                "box": [int(v) for v in cell.box],
                "specimen": key,
                "side": side_of(key, test_fraction),
                "label": final,
                "model_label": cell.label,
                "decision": decision,
                "reviewer": cell.reviewed_by.get_username() if cell.reviewed_by else review.reviewer_name,
                "reviewed_at": (cell.reviewed_at or review.signed_at).isoformat(),
                "signed_at": review.signed_at.isoformat(),
                "model_versions": {cell.cell_analysis.model_name: cell.cell_analysis.model_version},
            }
        )
    return records


def export(out: Path, test_fraction: float = DEFAULT_TEST_FRACTION) -> dict[str, Any]:
    """Write the dataset of every sign-off so far under ``out``; returns its manifest (``path`` added).

    Exporting the same sign-offs again writes nothing new and returns the same id. Raises
    :class:`DatasetError` before writing anything when a stored image is missing or altered.
    """
    reviews = list(ImageReview.objects.select_related("image").prefetch_related("image__analyses").order_by("image_id"))
    images = _image_records(reviews, test_fraction)
    cells = _cell_records(reviews, test_fraction)
    blobs: dict[str, bytes] = {}
    for review, record in zip(reviews, images, strict=True):
        try:
            data = storage.read(review.image.storage_name)
        except OSError as exc:
            raise DatasetError(f"image {review.image_id}: stored file missing ({exc})") from exc
        if hashlib.sha256(data).hexdigest() != record["sha256"]:
            raise DatasetError(f"image {review.image_id}: stored file does not match its SHA-256")
        blobs[record["file"]] = data
    body = {"schema": SCHEMA, "test_fraction": test_fraction, "images": images, "cells": cells}
    digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
    dataset_id = f"lab-{digest[:12]}"
    counts = {
        side: {"images": sum(r["side"] == side for r in images), "cells": sum(r["side"] == side for r in cells)}
        for side in ("train", "test")
    }
    manifest = {
        "dataset": dataset_id,
        "created_at": timezone.now().isoformat(),
        "split_rule": f"per specimen, by its key: test when int(key[:8], 16) / 2**32 < {test_fraction}",
        "specimens": {side: len({r["specimen"] for r in images if r["side"] == side}) for side in ("train", "test")},
        "counts": counts,
        **body,
    }
    target = Path(out) / dataset_id
    if not (target / "manifest.json").is_file():
        tmp = Path(out) / f".{dataset_id}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / "files").mkdir(parents=True)
        for name, data in sorted(blobs.items()):
            (tmp / name).write_bytes(data)
        sums = "".join(f"{r['sha256']}  {r['file']}\n" for r in sorted(images, key=lambda r: r["file"]))
        (tmp / "SHA256SUMS").write_text(sums)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        tmp.replace(target)
    (Path(out) / "LATEST").write_text(dataset_id + "\n")
    return {**json.loads((target / "manifest.json").read_text()), "path": str(target)}
