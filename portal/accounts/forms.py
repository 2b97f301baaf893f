from __future__ import annotations

from django import forms
from django.contrib.auth import get_user_model
from django.contrib.auth.forms import AuthenticationForm, UserCreationForm
from django.core.exceptions import ValidationError

__all__ = ["LoginForm", "OTPCodeForm", "RegistrationForm"]


class LoginForm(AuthenticationForm):
    """Says "awaiting approval" to a registered, not yet approved account (only with its right password,
    so the message tells nothing to someone guessing); any other failure keeps the generic message."""

    def clean(self) -> dict[str, object]:
        try:
            return super().clean()
        except ValidationError:
            username, password = self.cleaned_data.get("username"), self.cleaned_data.get("password")
            user = get_user_model().objects.filter(username=username).first() if username else None
            if user is not None and not user.is_active and password and user.check_password(password):
                raise ValidationError(
                    "Your account is waiting for an administrator's approval; you can log in once it is approved.",
                    code="inactive",
                ) from None
            raise


class RegistrationForm(UserCreationForm):
    email = forms.EmailField(required=True)
    first_name = forms.CharField(max_length=150)
    last_name = forms.CharField(max_length=150)

    class Meta(UserCreationForm.Meta):
        model = get_user_model()
        fields = ("username", "first_name", "last_name", "email")


class OTPCodeForm(forms.Form):
    """The six-digit code an authenticator app shows (spaces allowed, as some apps group the digits)."""

    otp_token = forms.CharField(
        label="Code from your authenticator app",
        max_length=12,
        widget=forms.TextInput(attrs={"autocomplete": "one-time-code", "inputmode": "numeric", "autofocus": True}),
    )

    def clean_otp_token(self) -> str:
        code = "".join(self.cleaned_data["otp_token"].split())
        if not code.isdigit() or len(code) != 6:
            raise ValidationError("Enter the 6 digits your authenticator app shows.", code="format")
        return code
