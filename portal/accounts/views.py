"""Registration (inactive until an admin approves) and password change through the actions layer."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth import update_session_auth_hash
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_not_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse_lazy
from django.views.decorators.http import require_http_methods

from portal import actions
from portal.accounts.forms import RegistrationForm

__all__ = ["PasswordChangeView", "register"]


@login_not_required
@require_http_methods(["GET", "POST"])
def register(request: HttpRequest) -> HttpResponse:
    form = RegistrationForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        actions.register_user(
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
        actions.change_password(user, form.cleaned_data["new_password1"], request=self.request)
        update_session_auth_hash(self.request, user)
        messages.success(self.request, "Password changed.")
        return redirect(self.get_success_url())
