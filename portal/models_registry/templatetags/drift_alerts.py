"""``{% drift_alerts %}``: the dashboard's line when a model is out of its drift limits (the last two weeks)."""

from __future__ import annotations

from typing import Any

from django import template

from portal.models_registry.drift import alerts
from portal.models_registry.watch import drift_rows

register = template.Library()

#: the dashboard looks at the current and the previous week
DASHBOARD_WEEKS = 2


@register.inclusion_tag("models_registry/drift_line.html")
def drift_alerts() -> dict[str, Any]:
    return {"alerts": alerts(drift_rows(DASHBOARD_WEEKS))}
