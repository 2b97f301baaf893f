"""Promotion and rollback from the portal's side: the checks and the switch (serving.versions), then the audit row.

Who switched is the operator named on the command line (``make promote ... BY=<name>``, default the login
name); when a portal user has that name the row links to them. Each row names the gate report the switch rests
on. TorchServe is switched when it runs from ``TORCHSERVE_WORKDIR`` (the one ``make run`` / ``make serve``
started), and afterwards it keeps only the default and the rollback target loaded (serving.versions.settle); when it
does not run, only the record changes, and the next start applies it (serving.versions.restore).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import requests
from django.conf import settings
from django.contrib.auth import get_user_model

from portal.audit.log import record
from serving.torchserve import status
from serving.versions import PromotionError, Versions, settle, switch_default

__all__ = ["PromotionError", "model_store", "promote", "rollback", "versions_of"]


def model_store() -> Path:
    return Path(settings.PORTAL_MODEL_STORE)


def versions_of(model: str) -> Versions:
    return Versions.of(model, model_store=model_store())


def _actor(by: str) -> Any:
    return get_user_model().objects.filter(username=by).first()


def _switch(action: str, versions: Versions, old: str, new: str, by: str, report: str | None) -> dict[str, Any]:
    server = status(settings.TORCHSERVE_WORKDIR)
    if server is not None and versions.model in server.models:
        switch_default(versions, new, server)
    entry = versions.note(action, old, new, by, report)
    entry["torchserve"] = "switched" if server is not None else "not running: applied at its next start"
    record(
        f"model.{action}",
        actor=_actor(by),
        object_type="model",
        object_id=f"{versions.model}:{new}",
        object_repr=f"{versions.model} {old} -> {new}",
        data={"operator": by, "model": versions.model, "from": old, "to": new, "report": report},
    )
    if server is not None and versions.model in server.models:
        # keep the default and the rollback target loaded, unregister the rest (``old`` drains first)
        try:
            entry["unloaded"] = settle(versions, server, demoted=old)
        except (PromotionError, requests.RequestException) as exc:  # the switch stands; memory is not yet freed
            entry["unloaded_error"] = str(exc)
    return entry


def _refused(versions: Versions, action: str, by: str, exc: Exception) -> None:
    record(
        "model.switch_refused",
        actor=_actor(by),
        object_type="model",
        object_id=versions.model,
        object_repr=f"{action} {versions.model}",
        data={"operator": by, "action": action, "reason": str(exc)},
    )


def promote(model: str, version: str, by: str) -> dict[str, Any]:
    """Make ``version`` the default; refused (and audited) without its passed gate report."""
    versions = versions_of(model)
    try:
        versions.plan_promotion(version)
        return _switch("promote", versions, versions.default_version(), version, by, versions.report_path(version).name)
    except PromotionError as exc:
        _refused(versions, "promote", by, exc)
        raise


def rollback(model: str, by: str) -> dict[str, Any]:
    """Return to the default before the current one in one step; refused (and audited) without one."""
    versions = versions_of(model)
    try:
        current, target, report = versions.plan_rollback()
        name = versions.report_path(target).name if report is not None else f"{model}.card.json (shipped)"
        return _switch("rollback", versions, current, target, by, name)
    except PromotionError as exc:
        _refused(versions, "rollback", by, exc)
        raise
