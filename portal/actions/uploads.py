"""Uploads: validated images committed with their analyses, their queued jobs and the audit row."""

from __future__ import annotations

from collections.abc import Sequence

from django.conf import settings
from django.core.exceptions import ValidationError
from django.http import HttpRequest

from portal import jobs
from portal.actions.events import User
from portal.analyses import storage
from portal.analyses.models import Analysis, CellAnalysis, Image, specimen_is_signed
from portal.analyses.validation import ValidatedImage
from portal.audit.log import record
from portal.patients.models import Specimen

__all__ = ["upload_images"]


def upload_images(
    actor: User,
    specimen: Specimen,
    images: Sequence[ValidatedImage],
    model_names: Sequence[str],
    request: HttpRequest | None = None,
) -> list[Image]:
    """Store validated images; commit them with one pending Analysis and one queued job per (image, model),
    and one pending CellAnalysis with its job per image when a cell model is configured (PORTAL_CELL_MODEL).

    Files are written first (random names); rows, jobs and the audit row are committed together
    (the job queue lives in the same database), so an accepted upload always has its jobs. The files
    are removed unless the transaction commits (portal.analyses.storage.files_with_rows).
    Workers call TorchServe after commit.
    """
    if not images:
        raise ValidationError("choose at least one image")
    unknown = sorted(set(model_names) - set(settings.PORTAL_MODELS))
    if unknown or not model_names:
        raise ValidationError(f"unknown model(s): {', '.join(unknown) or '(none chosen)'}")
    with storage.files_with_rows(*(("images", item.data, item.extension) for item in images)) as files:
        # the specimen's row is locked as its sign-off locks it (portal.actions.specimen): one or the other
        Specimen.objects.select_for_update().get(pk=specimen.pk)
        if specimen_is_signed(specimen.pk):
            raise ValidationError("this specimen is signed off: it takes no more images (start a new specimen)")
        created: list[Image] = []
        analysis_ids: list[int] = []
        cell_analysis_ids: list[int] = []
        cell_model = settings.PORTAL_CELL_MODEL
        for item, name in zip(images, files.names, strict=True):
            image = Image.objects.create(
                specimen=specimen,
                storage_name=name,
                original_name=item.original_name,
                content_type=item.content_type,
                size_bytes=len(item.data),
                width=item.width,
                height=item.height,
                sha256=item.sha256,
                uploaded_by=actor,
            )
            created.append(image)
            for model_name in model_names:
                analysis_ids.append(Analysis.objects.create(image=image, model_name=model_name, requested_by=actor).pk)
            if cell_model:
                cell_analysis_ids.append(
                    CellAnalysis.objects.create(image=image, model_name=cell_model, requested_by=actor).pk
                )
        record(
            "image.upload",
            actor=actor,
            obj=specimen,
            request=request,
            data={
                "images": [{"id": i.pk, "name": i.original_name, "sha256": i.sha256} for i in created],
                "models": list(model_names),
                "cell_model": cell_model,
            },
        )
        jobs.enqueue(analysis_ids)
        jobs.enqueue_cells(cell_analysis_ids)
    return created
