"""Roles are Django groups with these permissions (created by a data migration, kept in sync by it)."""

from __future__ import annotations

from typing import Any

__all__ = ["ADMIN", "REVIEWER", "ROLE_PERMISSIONS", "SECOND_FACTOR_ROLES", "TECHNOLOGIST", "sync_roles"]

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
    "analyses.view_review",  # per-model sign-offs of earlier versions
    "analyses.view_imagereview",
    "analyses.view_specimenreview",
    "analyses.view_cellanalysis",
    "analyses.view_cell",
    "analyses.reclassify_cell",
]
_REVIEWER = [
    *_TECH,
    "analyses.sign_off_analysis",
    "analyses.add_imagereview",
    "analyses.add_specimenreview",
    "analyses.export_analyses",
]
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
    # a lost phone: the admin deletes the user's authenticator app, who then enrols a new one
    "otp_totp.view_totpdevice",
    "otp_totp.delete_totpdevice",
]

ROLE_PERMISSIONS: dict[str, list[str]] = {TECHNOLOGIST: _TECH, REVIEWER: _REVIEWER, ADMIN: _ADMIN}
# Roles that sign results off or administer accounts give a TOTP code after their password
# (portal/accounts/second_factor.py; superusers and staff too, whatever their groups).
SECOND_FACTOR_ROLES = (REVIEWER, ADMIN)


def sync_roles(apps: Any = None, **kwargs: Any) -> None:
    """Create or update the role groups with exactly ROLE_PERMISSIONS.

    Runs from the data migration (historical ``apps``) and on every ``post_migrate`` (including the
    flush after transactional tests), so the groups always match this module.
    """
    from django.apps import apps as global_apps
    from django.contrib.auth.management import create_permissions

    registry = apps or global_apps
    # Permissions are normally created after each app's migrations; make sure all exist now.
    for app_config in registry.get_app_configs():
        had_models = getattr(app_config, "models_module", None)
        app_config.models_module = True
        create_permissions(app_config, apps=registry, verbosity=0)
        app_config.models_module = had_models
    group_model = registry.get_model("auth", "Group")
    permission_model = registry.get_model("auth", "Permission")
    for role, perms in ROLE_PERMISSIONS.items():
        group, _ = group_model.objects.get_or_create(name=role)
        wanted = []
        for perm in perms:
            app_label, codename = perm.split(".")
            found = permission_model.objects.filter(content_type__app_label=app_label, codename=codename).first()
            if found is None and apps is not None:
                # An early migration sees models added later as absent; a later migration
                # (0002_cell_roles) and every post_migrate sync grant their permissions.
                continue
            if found is None:
                raise permission_model.DoesNotExist(f"permission {perm} does not exist")
            wanted.append(found)
        group.permissions.set(wanted)
