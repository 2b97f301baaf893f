"""What the Models page and ``/api/models/`` show: each served model's versions, its default, card and gate report.

Read from the versions store and the model store (serving.versions) and, when TorchServe runs from
``TORCHSERVE_WORKDIR``, from its management API (the versions it has loaded and which one answers by default).
"""

from __future__ import annotations

import logging
from typing import Any

import requests
from django.conf import settings

from core.registry import cell_model_names
from portal.models_registry.switch import versions_of
from serving.torchserve import status
from serving.versions import Versions, served_versions

__all__ = ["CARD_FIELDS", "model_names", "models_overview", "version_info"]

log = logging.getLogger(__name__)

#: the card fields shown per version (the full card is in the model store or the versions store)
CARD_FIELDS = ("name", "version", "classes", "temperature", "abstain_threshold", "benign_threshold", "intended_use")


def model_names() -> list[str]:
    """The models the portal uses: the frame models, then the cell model."""
    return [*settings.PORTAL_MODELS, *filter(None, [settings.PORTAL_CELL_MODEL])]


def _card_summary(card: dict[str, Any] | None) -> dict[str, Any] | None:
    if card is None:
        return None
    out = {k: card.get(k) for k in CARD_FIELDS}
    out["lab_update"] = card.get("training", {}).get("lab_update")
    return out


def version_info(versions: Versions, version: str, default: str, loaded: list[str] | None) -> dict[str, Any]:
    report = versions.report(version)
    return {
        "version": version,
        "shipped": version == versions.base_version(),
        "default": version == default,
        "loaded": None if loaded is None else version in loaded,
        "card": _card_summary(versions.card(version)),
        "gate": None
        if report is None
        else {
            "passed": bool(report.get("passed")),
            "report": versions.report_path(version).name,
            "finished": report.get("finished"),
            "served_version": report.get("served", {}).get("version"),
            "criteria": report.get("criteria", []),
            "candidate_metrics": {
                k: v
                for k, v in report.get("candidate", {}).get("metrics", {}).items()
                if k not in ("malignant_as_benign", "blast_as_normal")  # lists of frame / cell ids
            },
        },
    }


def models_overview() -> list[dict[str, Any]]:
    """One entry per model (see the module docstring); a model without its card in the model store is skipped."""
    server = status(settings.TORCHSERVE_WORKDIR)
    out = []
    for model in model_names():
        versions = versions_of(model)
        try:
            default = versions.default_version()
        except OSError:
            continue
        loaded: list[str] | None = None
        if server is not None and model in server.models:
            try:
                loaded = served_versions(model, server)
            except (requests.RequestException, OSError, ValueError) as exc:
                log.warning("versions of %s not read from TorchServe: %s", model, exc)
        known = [versions.base_version(), *versions.candidates()]
        record = versions.record()
        out.append(
            {
                "name": model,
                "kind": "cells" if model in cell_model_names() else "frames",
                "default_version": default,
                "previous_version": versions.previous_version(),
                "loaded_versions": loaded,
                "versions": [version_info(versions, v, default, loaded) for v in dict.fromkeys(known)],
                "history": record.get("log", []),
            }
        )
    return out
