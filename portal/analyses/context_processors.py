from __future__ import annotations

from django.http import HttpRequest

from portal.analyses.reports import DISCLAIMER


def disclaimer(request: HttpRequest) -> dict[str, str]:
    return {"DISCLAIMER": DISCLAIMER}
