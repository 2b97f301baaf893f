"""Registration (inactive until an admin approves), password change through the actions layer, and the
second-factor pages (enrolment of an authenticator app, the code after the password)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

import segno
from django.conf import settings
from django.contrib import messages
from django.contrib.auth import update_session_auth_hash
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_not_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render, resolve_url
from django.urls import reverse, reverse_lazy
from django.utils.http import url_has_allowed_host_and_scheme
from django.utils.safestring import mark_safe
from django.views.decorators.http import require_http_methods
from django_otp import login as otp_login

from portal.accounts import second_factor
from portal.accounts.forms import OTPCodeForm, RegistrationForm
from portal.actions.accounts import change_password, register_user

__all__ = ["PasswordChangeView", "otp_setup", "otp_verify", "register"]


@login_not_required
@require_http_methods(["GET", "POST"])
def register(request: HttpRequest) -> HttpResponse:
    form = RegistrationForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        register_user(
            username=data["username"],
            email=data["email"],
            first_name=data["first_name"],
            last_name=data["last_name"],
            password=data["password1"],
            request=request,
        )
        messages.success(request, "Account created. An administrator must approve it before you can log in.")
        return redirect("accounts:login")
    return render(request, "accounts/register.html", {"form": form})


class PasswordChangeView(auth_views.PasswordChangeView):
    template_name = "accounts/password_change.html"
    success_url = reverse_lazy("analyses:dashboard")

    def form_valid(self, form: Any) -> HttpResponse:
        user = form.user  # the authenticated user the form was built for
        change_password(user, form.cleaned_data["new_password1"], request=self.request)
        update_session_auth_hash(self.request, user)
        messages.success(self.request, "Password changed.")
        return redirect(self.get_success_url())


def _next_url(request: HttpRequest) -> str:
    wanted = request.POST.get("next") or request.GET.get("next") or ""
    if wanted and url_has_allowed_host_and_scheme(wanted, {request.get_host()}, request.is_secure()):
        return wanted
    return resolve_url(settings.LOGIN_REDIRECT_URL)


def _refusal(result: second_factor.CodeResult) -> str:
    if result is second_factor.CodeResult.THROTTLED:
        return "Too many wrong codes: wait a few seconds before the next try."
    return "That code is not right (or was used already). Enter the code your app shows now."


@require_http_methods(["GET", "POST"])
def otp_setup(request: HttpRequest) -> HttpResponse:
    """First login of a reviewer or admin: enrol an authenticator app, confirmed by its first code.

    Only while the account has no confirmed device: replacing one needs an administrator to delete
    the old device (Django admin, "TOTP devices"), so a stolen password cannot enrol a new phone.
    """
    if second_factor.confirmed_device(request.user) is not None:
        return redirect(f"{reverse('accounts:otp_verify')}?{urlencode({'next': _next_url(request)})}")
    device = second_factor.enrolment_device(request.user)
    form = OTPCodeForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        result = second_factor.check_code(device, form.cleaned_data["otp_token"], request=request, stage="enrolment")
        if result is second_factor.CodeResult.OK:
            device.confirmed = True
            device.save(update_fields=["confirmed"])
            otp_login(request, device)
            messages.success(request, "Authenticator app enrolled. You will be asked for a code at each login.")
            return redirect(_next_url(request))
        form.add_error("otp_token", _refusal(result))
    uri = device.config_url
    context = {
        "form": form,
        "otpauth_uri": uri,
        "secret": second_factor.secret_base32(device),
        "qr_svg": mark_safe(segno.make(uri, error="m").svg_inline(scale=4, dark="#000", light="#fff")),  # noqa: S308 (our own SVG)
        "next": _next_url(request),
    }
    return render(request, "accounts/otp_setup.html", context)


@require_http_methods(["GET", "POST"])
def otp_verify(request: HttpRequest) -> HttpResponse:
    """The code after the password, each login (reviewers, admins, superusers)."""
    device = second_factor.confirmed_device(request.user)
    if device is None:
        return redirect(f"{reverse('accounts:otp_setup')}?{urlencode({'next': _next_url(request)})}")
    form = OTPCodeForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        result = second_factor.check_code(device, form.cleaned_data["otp_token"], request=request, stage="login")
        if result is second_factor.CodeResult.OK:
            otp_login(request, device)
            return redirect(_next_url(request))
        form.add_error("otp_token", _refusal(result))
    return render(request, "accounts/otp_verify.html", {"form": form, "next": _next_url(request)})
