"""Roles are Django groups with these permissions (created by a data migration, kept in sync by it)."""

from __future__ import annotations

__all__ = ["ADMIN", "REVIEWER", "ROLE_PERMISSIONS", "TECHNOLOGIST"]

TECHNOLOGIST = "technologist"
REVIEWER = "reviewer"
ADMIN = "admin"

_TECH = [
    "patients.view_patient",
    "patients.add_patient",
    "patients.change_patient",
    "patients.view_specimen",
    "patients.add_specimen",
    "patients.change_specimen",
    "analyses.view_image",
    "analyses.add_image",
    "analyses.view_analysis",
    "analyses.add_analysis",
    "analyses.view_review",
]
_REVIEWER = [*_TECH, "analyses.sign_off_analysis", "analyses.add_review", "analyses.export_analyses"]
_ADMIN = [
    *_REVIEWER,
    "auth.view_user",
    "auth.add_user",
    "auth.change_user",
    "auth.view_group",
    "auth.change_group",
    "audit.view_auditevent",
    "authtoken.view_tokenproxy",
    "authtoken.delete_tokenproxy",
]

ROLE_PERMISSIONS: dict[str, list[str]] = {TECHNOLOGIST: _TECH, REVIEWER: _REVIEWER, ADMIN: _ADMIN}
