"""Accounts: self-registration and password changes, audited."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.http import HttpRequest

from portal.actions.events import User
from portal.audit.log import record

__all__ = ["change_password", "register_user"]


def register_user(
    *, username: str, email: str, first_name: str, last_name: str, password: str, request: HttpRequest | None = None
) -> User:
    """Self-registration: an inactive account without roles, until an admin approves it."""
    with transaction.atomic():
        user = get_user_model().objects.create_user(
            username=username,
            email=email,
            first_name=first_name,
            last_name=last_name,
            password=password,
            is_active=False,
        )
        record("user.register", actor=user, obj=user, data={"email": email}, request=request)
    return user


def change_password(user: AbstractBaseUser, new_password: str, request: HttpRequest | None = None) -> None:
    with transaction.atomic():
        user.set_password(new_password)
        user.save(update_fields=["password"])
        record("user.password_change", actor=user, obj=user, request=request)
