from __future__ import annotations

from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "portal.accounts"
    label = "accounts"
    verbose_name = "Accounts and roles"

    def ready(self) -> None:
        from django.db.models.signals import post_migrate

        from portal.accounts import signals  # noqa: F401  (connects the login/logout audit handlers)

        # Keep the role groups in sync after every migrate/flush (the data migration creates them first).
        post_migrate.connect(_sync_roles, sender=self, dispatch_uid="portal.accounts.sync_roles")


def _sync_roles(sender: AppConfig, apps: object = None, **kwargs: object) -> None:
    from portal.accounts.roles import sync_roles

    sync_roles(apps)
