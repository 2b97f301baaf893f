"""Probes for process managers and Kubernetes: ``/healthz`` (liveness) and ``/readyz`` (readiness).

``/healthz`` answers 200 whenever the process serves requests: no authentication, no data, no
database. ``/readyz`` checks what the portal depends on and names what is not reachable:

- ``database``: a query answers (uploads need it): 503 when it does not;
- ``queue``: the job queue (in the same database) answers; its depth and oldest job's age are given;
- ``model_server``: TorchServe's ``/ping``. Reported, but it does not make the portal unready: without
  it uploads are still accepted and wait (the jobs retry), and results and reviews still work.

Written as two small views rather than with django-health-check: the answer needs one check that is
reported without failing readiness, and a body that other services can read without a plugin.
"""

from __future__ import annotations

from datetime import datetime

from django.conf import settings
from django.contrib.auth.decorators import login_not_required
from django.db import DatabaseError, connection
from django.db.models import Min
from django.http import HttpRequest, JsonResponse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

__all__ = ["healthz", "readyz"]


@login_not_required
@never_cache
@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


@login_not_required
@never_cache
@require_GET
def readyz(request: HttpRequest) -> JsonResponse:
    from django_q.models import OrmQ

    from portal.analyses.inference import ModelClient

    checks: dict[str, dict[str, object]] = {}
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        checks["database"] = {"ok": True, "engine": settings.DATABASES["default"]["ENGINE"].rsplit(".", 1)[-1]}
    except DatabaseError as exc:
        checks["database"] = {"ok": False, "error": exc.__class__.__name__}
    try:
        queued = OrmQ.objects.using(settings.Q_CLUSTER["orm"])
        oldest: datetime | None = queued.aggregate(oldest=Min("lock"))["oldest"]
        checks["queue"] = {
            "ok": True,
            "depth": queued.count(),
            "oldest_s": round(max(0.0, (timezone.now() - oldest).total_seconds()), 1) if oldest else 0.0,
        }
    except DatabaseError as exc:
        checks["queue"] = {"ok": False, "error": exc.__class__.__name__}
    healthy, detail = ModelClient().ping()
    checks["model_server"] = {"ok": healthy, "detail": detail, "required": False}
    ready = all(c["ok"] for name, c in checks.items() if c.get("required", True))
    return JsonResponse({"status": "ready" if ready else "unavailable", "checks": checks}, status=200 if ready else 503)
