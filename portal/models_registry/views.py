"""The Models page (each model's served versions, default, card and gate report) and the drift watch page."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils.safestring import mark_safe

from portal.audit.log import record
from portal.models_registry.drift import MIN_RESULTS
from portal.models_registry.registry import models_overview
from portal.models_registry.watch import WEEKS, drift_rows, svg_chart

__all__ = ["drift_page", "models_page"]

#: the charts the drift page draws per model (the class mix is in the table)
CHARTS = ("acceptance", "abstention", "refusal", "mean_confidence")


def models_page(request: HttpRequest) -> HttpResponse:
    record("model.list", request=request)
    return render(request, "models_registry/models.html", {"models": models_overview()})


def drift_page(request: HttpRequest) -> HttpResponse:
    record("model.drift", request=request)
    rows = drift_rows()
    by_model: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_model[row["model"]].append(row)
    models = []
    for model, weeks in by_model.items():
        labels = [w["week"] for w in weeks]
        charts = [mark_safe(svg_chart([w["metrics"][m] for w in weeks], labels, f"{model}: {m}")) for m in CHARTS]  # noqa: S308 - built with escape()
        models.append({"name": model, "weeks": weeks, "charts": charts})
    return render(
        request,
        "models_registry/drift.html",
        {
            "models": models,
            "weeks": WEEKS,
            "min_results": MIN_RESULTS,
            "alerts": [r for r in rows if r["out_of_limits"]],
        },
    )
