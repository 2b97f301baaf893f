from __future__ import annotations

from django.apps import AppConfig

SWEEP_SCHEDULE = "portal: sweep analyses and storage"


class AnalysesConfig(AppConfig):
    name = "portal.analyses"
    label = "analyses"
    verbose_name = "Images, analyses and reviews"

    def ready(self) -> None:
        from django.db.models.signals import post_migrate

        post_migrate.connect(_schedule_sweep, sender=self, dispatch_uid="portal.analyses.schedule_sweep")


def _schedule_sweep(sender: AppConfig, **kwargs: object) -> None:
    """The job queue's safety net (portal.jobs.sweep) runs every minute in the worker cluster."""
    from django_q.models import Schedule

    Schedule.objects.update_or_create(
        name=SWEEP_SCHEDULE,
        defaults={"func": "portal.jobs.sweep", "schedule_type": Schedule.MINUTES, "minutes": 1, "repeats": -1},
    )
