from __future__ import annotations

from typing import Any

from django.apps import AppConfig

SWEEP_SCHEDULE = "portal: sweep analyses and storage"


class AnalysesConfig(AppConfig):
    name = "portal.analyses"
    label = "analyses"
    verbose_name = "Images, analyses and reviews"

    def ready(self) -> None:
        from django.core import checks
        from django.db.models.signals import post_migrate

        post_migrate.connect(_schedule_sweep, sender=self, dispatch_uid="portal.analyses.schedule_sweep")
        checks.register(_check_cell_model)
        checks.register(_check_inference)


def _check_cell_model(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    """PORTAL_CELL_MODEL names a registered cell model (or is empty: no cell analysis)."""
    from django.conf import settings
    from django.core import checks

    from core.registry import cell_model_names

    name = settings.PORTAL_CELL_MODEL
    if name and name not in cell_model_names():
        return [
            checks.Error(
                f"PORTAL_CELL_MODEL={name!r} is not a registered cell model ({', '.join(cell_model_names())})",
                id="portal.E001",
            )
        ]
    return []


def _check_inference(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    """PORTAL_INFERENCE_PROTOCOL is one the client speaks; PORTAL_MODEL_URLS names served models and
    gives each an http(s) URL."""
    from django.conf import settings
    from django.core import checks

    from core.registry import served_model_names
    from portal.analyses.inference import INFERENCE_PROTOCOLS

    errors = []
    if settings.PORTAL_INFERENCE_PROTOCOL not in INFERENCE_PROTOCOLS:
        errors.append(
            checks.Error(
                f"PORTAL_INFERENCE_PROTOCOL={settings.PORTAL_INFERENCE_PROTOCOL!r} is not one of "
                f"{', '.join(INFERENCE_PROTOCOLS)}",
                id="portal.E002",
            )
        )
    for model, url in settings.PORTAL_MODEL_URLS.items():
        if model not in served_model_names():
            errors.append(
                checks.Error(f"PORTAL_MODEL_URLS names {model!r}, which is not a served model", id="portal.E003")
            )
        if not url.startswith(("http://", "https://")):
            errors.append(checks.Error(f"PORTAL_MODEL_URLS: {model}={url!r} is not an http(s) URL", id="portal.E004"))
    return errors


def _schedule_sweep(sender: AppConfig, **kwargs: object) -> None:
    """The job queue's safety net (portal.jobs.sweep) runs every minute in the worker cluster."""
    from django_q.models import Schedule

    Schedule.objects.update_or_create(
        name=SWEEP_SCHEDULE,
        defaults={"func": "portal.jobs.sweep", "schedule_type": Schedule.MINUTES, "minutes": 1, "repeats": -1},
    )
