"""Drift watch: per frame model and ISO week, what it answered against its validation baseline, with control limits.

Pure Python (no Django): the page and the dashboard line feed it the week's results (:class:`Result`) and each
version's :class:`Baseline`, and show what it returns. Drift opens a review (the dashboard says which model and
week is out of its limits and links here); it never retrains anything.

Per week, over the results of the week (all versions; the baseline is that of the version that answered most of
them):

- ``acceptance``: of the signed-off answers (not referred), the share whose label the reviewer kept;
- ``abstention``: of the answers, the share referred (abstained);
- ``refusal``: of the finished analyses, the share the model server refused (not a blood smear, ...);
- ``class:<name>``: of the labelled answers, the share of each class (the class mix);
- ``mean_confidence``: the mean top probability of the answers.

Limits: 3-sigma Shewhart limits around the baseline for ``n`` results of the week: a proportion ``p`` gets
``p +- 3 sqrt(p (1 - p) / n)`` (a p-chart; ``p`` is held inside [0.005, 0.995] for the width, so a baseline of 0
refusals still allows a rare one), the mean confidence ``mean +- 3 sd / sqrt(n)``; clipped to [0, 1]. A week
with fewer than :data:`MIN_RESULTS` results is shown but never flagged.

Baselines: the version's numbers on the locked test set from a gate report (:mod:`model_update.gate`; for the
shipped version the served side of any report), else from its card (abstention = 1 - coverage at the threshold,
acceptance = the accepted accuracy, the class mix from the validation confusion matrix's predicted columns,
refusal 0; no confidence baseline).
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any

__all__ = [
    "MIN_RESULTS",
    "Baseline",
    "Result",
    "alerts",
    "baseline_from_card",
    "baseline_from_metrics",
    "limits",
    "week_of",
    "weekly",
]

MIN_RESULTS = 20
SIGMAS = 3.0


@dataclass(frozen=True)
class Baseline:
    acceptance: float | None
    abstention: float | None
    refusal: float | None
    class_mix: Mapping[str, float] = field(default_factory=dict)
    mean_confidence: float | None = None
    confidence_sd: float | None = None
    source: str = ""


@dataclass(frozen=True)
class Result:
    """One finished analysis: ``status`` done or rejected; ``final_label`` the reviewer's, when signed off."""

    model: str
    version: str
    week: str
    status: str
    abstained: bool = False
    label: str = ""
    confidence: float | None = None
    final_label: str | None = None


def week_of(day: date) -> str:
    year, week, _ = day.isocalendar()
    return f"{year}-W{week:02d}"


def baseline_from_metrics(metrics: Mapping[str, Any], source: str) -> Baseline:
    """From a gate report's metrics of one version (model_update.gate.summarise)."""
    return Baseline(
        acceptance=metrics.get("accepted_accuracy"),
        abstention=metrics.get("abstention_rate"),
        refusal=metrics.get("refusal_rate"),
        class_mix=dict(metrics.get("class_mix") or {}),
        mean_confidence=metrics.get("mean_confidence"),
        confidence_sd=metrics.get("confidence_sd"),
        source=source,
    )


def baseline_from_card(card: Mapping[str, Any]) -> Baseline:
    metrics = card.get("metrics", {})
    abstention = metrics.get("abstention", {})
    matrix = metrics.get("original", {}).get("confusion_matrix")
    mix: dict[str, float] = {}
    if matrix:
        columns = [sum(row[j] for row in matrix) for j in range(len(matrix[0]))]
        total = sum(columns) or 1
        mix = {c: columns[j] / total for j, c in enumerate(card.get("classes", []))}
    coverage = abstention.get("coverage")
    return Baseline(
        acceptance=abstention.get("accepted_accuracy"),
        abstention=None if coverage is None else 1.0 - float(coverage),
        refusal=0.0,
        class_mix=mix,
        source=f"card of {card.get('name')} {card.get('version')} (validation)",
    )


def limits(p0: float, n: int) -> tuple[float, float]:
    """3-sigma p-chart limits for a proportion with baseline ``p0`` over ``n`` results."""
    p = min(max(p0, 0.005), 0.995)
    half = SIGMAS * math.sqrt(p * (1 - p) / max(n, 1))
    return max(0.0, p0 - half), min(1.0, p0 + half)


def _point(value: float | None, n: int, base: float | None, sd: float | None = None) -> dict[str, Any]:
    if value is None or base is None or n == 0:
        return {"value": value, "baseline": base, "lo": None, "hi": None, "n": n, "out": False}
    if sd is None:
        lo, hi = limits(base, n)
    else:
        half = SIGMAS * sd / math.sqrt(n)
        lo, hi = max(0.0, base - half), min(1.0, base + half)
    return {
        "value": round(value, 4),
        "baseline": round(base, 4),
        "lo": round(lo, 4),
        "hi": round(hi, 4),
        "n": n,
        "out": n >= MIN_RESULTS and not lo <= value <= hi,
    }


def _share(hits: int, n: int) -> float | None:
    return hits / n if n else None


def weekly(
    results: Iterable[Result], baselines: Mapping[tuple[str, str], Baseline], classes: Sequence[str]
) -> list[dict[str, Any]]:
    """One row per (model, week), oldest week first: n, the version, each metric with its baseline and limits."""
    groups: dict[tuple[str, str], list[Result]] = defaultdict(list)
    for r in results:
        groups[(r.model, r.week)].append(r)
    rows = []
    for (model, week), items in sorted(groups.items()):
        version = (Counter(r.version for r in items if r.version) or Counter([""])).most_common(1)[0][0]
        base = baselines.get((model, version)) or Baseline(None, None, None, source="no baseline")
        done = [r for r in items if r.status == "done"]
        answered = [r for r in done if not r.abstained and r.label]
        signed = [r for r in answered if r.final_label]
        confidences = [r.confidence for r in done if r.confidence is not None]
        metrics = {
            "acceptance": _point(
                _share(sum(r.final_label == r.label for r in signed), len(signed)), len(signed), base.acceptance
            ),
            "abstention": _point(_share(sum(r.abstained for r in done), len(done)), len(done), base.abstention),
            "refusal": _point(_share(sum(r.status == "rejected" for r in items), len(items)), len(items), base.refusal),
            "mean_confidence": _point(
                sum(confidences) / len(confidences) if confidences else None,
                len(confidences),
                base.mean_confidence,
                sd=base.confidence_sd
                if base.confidence_sd is not None
                else (None if base.mean_confidence is None else 0.0),
            ),
        }
        for c in classes:
            metrics[f"class:{c}"] = _point(
                _share(sum(r.label == c for r in answered), len(answered)), len(answered), base.class_mix.get(c)
            )
        rows.append(
            {
                "model": model,
                "week": week,
                "version": version,
                "n": len(items),
                "baseline_source": base.source,
                "metrics": metrics,
                "out_of_limits": [k for k, v in metrics.items() if v["out"]],
            }
        )
    return rows


def alerts(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The rows with a metric out of its limits (what the dashboard lists)."""
    return [
        {"model": r["model"], "week": r["week"], "version": r["version"], "metrics": list(r["out_of_limits"])}
        for r in rows
        if r["out_of_limits"]
    ]
