"""The drift watch's inputs from the database and the versions store, and its charts (portal.models_registry.drift)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.conf import settings
from django.utils import timezone
from django.utils.html import escape

from core.registry import CLASS_NAMES
from portal.analyses.models import Analysis
from portal.models_registry.drift import Baseline, Result, baseline_from_card, baseline_from_metrics, week_of, weekly
from portal.models_registry.switch import versions_of

__all__ = ["WEEKS", "baselines", "drift_rows", "results", "svg_chart"]

#: how many weeks back the page and the dashboard look
WEEKS = 12


def results(weeks: int = WEEKS) -> list[Result]:
    since = timezone.now() - timedelta(weeks=weeks)
    rows = Analysis.objects.filter(
        created_at__gte=since, status__in=[Analysis.Status.DONE, Analysis.Status.REJECTED]
    ).values_list(
        "model_name",
        "model_version",
        "created_at",
        "status",
        "abstained",
        "label",
        "confidence",
        "image__review__final_label",
    )
    return [
        Result(m, v, week_of(timezone.localtime(t).date()), s, a, lab, c, f)
        for m, v, t, s, a, lab, c, f in rows.iterator()
    ]


def baselines(models: list[str]) -> dict[tuple[str, str], Baseline]:
    out: dict[tuple[str, str], Baseline] = {}
    for model in models:
        versions = versions_of(model)
        try:
            known = [versions.base_version(), *versions.candidates()]
        except OSError:
            continue
        for version in known:
            report = versions.report(version)
            if report is None:
                continue
            source = f"gate report {versions.report_path(version).name}"
            sides = [(version, report["candidate"]["metrics"], f"{source} (locked test set)")]
            sides.append((report["served"]["version"], report["served"]["metrics"], f"{source}, served side"))
            for v, metrics, text in sides:
                if "abstention_rate" in metrics:  # else the card's numbers (below)
                    out.setdefault((model, v), baseline_from_metrics(metrics, text))
        for version in known:
            card = versions.card(version)
            if (model, version) not in out and card is not None:
                out[(model, version)] = baseline_from_card(card)
    return out


def drift_rows(weeks: int = WEEKS) -> list[dict[str, Any]]:
    models = list(settings.PORTAL_MODELS)
    return weekly(results(weeks), baselines(models), CLASS_NAMES)


def svg_chart(points: list[dict[str, Any]], weeks: list[str], title: str, width: int = 420, height: int = 140) -> str:
    """A small control chart: the weekly values (dots, red when out), the baseline (dashed) and the limits (band)."""
    pad, n = 28, max(len(weeks), 1)

    def x(i: int) -> float:
        return pad + (width - 2 * pad) * (i + 0.5) / n

    def y(v: float) -> float:
        return height - pad - (height - 2 * pad) * v

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
        f'aria-label="{escape(title)}">',
        f'<text x="{pad}" y="14" font-size="12">{escape(title)}</text>',
        f'<line x1="{pad}" y1="{y(0)}" x2="{width - pad}" y2="{y(0)}" stroke="#999"/>',
        f'<text x="2" y="{y(0) + 4}" font-size="10">0</text><text x="2" y="{y(1) + 4}" font-size="10">1</text>',
    ]
    for i, p in enumerate(points):
        if p["lo"] is not None:
            parts.append(
                f'<rect x="{x(i) - 8:.1f}" y="{y(p["hi"]):.1f}" width="16" height="{y(p["lo"]) - y(p["hi"]):.1f}" '
                f'fill="#cde" opacity="0.7"><title>limits {p["lo"]}-{p["hi"]}</title></rect>'
            )
        if p["baseline"] is not None:
            parts.append(
                f'<line x1="{x(i) - 10:.1f}" y1="{y(p["baseline"]):.1f}" x2="{x(i) + 10:.1f}" '
                f'y2="{y(p["baseline"]):.1f}" stroke="#357" stroke-dasharray="3,2"/>'
            )
        if p["value"] is not None:
            colour = "#c00" if p["out"] else "#222"
            parts.append(
                f'<circle cx="{x(i):.1f}" cy="{y(p["value"]):.1f}" r="3.5" fill="{colour}">'
                f"<title>{escape(weeks[i])}: {p['value']} (n={p['n']})</title></circle>"
            )
        parts.append(f'<text x="{x(i) - 14:.1f}" y="{height - 8}" font-size="9">{escape(weeks[i][-3:])}</text>')
    parts.append("</svg>")
    return "".join(parts)
