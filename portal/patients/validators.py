"""Patient data as a lab checks it, one set of rules for forms, the API and Django admin.

The rules are model field validators, so every path that validates a model (ModelForm, DRF's
ModelSerializer, admin, ``full_clean`` in portal.actions) applies the same ones:

- text (MRN, names, accession numbers): no control or format characters (tabs, newlines, NUL,
  bidirectional overrides ...), no leading or trailing spaces, not empty;
- MRN: additionally matches ``PORTAL_MRN_PATTERN`` when a lab configures one (default: any printable
  text, since MRN formats differ from lab to lab);
- date of birth: not in the future, and not more than ``PORTAL_MAX_AGE_YEARS`` (default 130) ago.
"""

from __future__ import annotations

import datetime
import re
import unicodedata

from django.conf import settings
from django.core.exceptions import ValidationError
from django.utils import timezone

__all__ = ["validate_date_of_birth", "validate_mrn", "validate_printable"]


def validate_printable(value: str) -> None:
    if not isinstance(value, str):
        return
    bad = sorted({f"U+{ord(ch):04X}" for ch in value if unicodedata.category(ch).startswith("C")})
    if bad:
        raise ValidationError(
            "Contains control or invisible characters (%(chars)s); type it again without them.",
            code="control_characters",
            params={"chars": ", ".join(bad[:5])},
        )
    if value != value.strip():
        raise ValidationError("Remove the spaces at the start or end.", code="surrounding_space")
    if not value:
        raise ValidationError("This field cannot be blank.", code="blank")


def validate_mrn(value: str) -> None:
    validate_printable(value)
    pattern = getattr(settings, "PORTAL_MRN_PATTERN", "")
    if pattern and not re.fullmatch(pattern, value):
        raise ValidationError(
            "The MRN does not have this lab's format (%(pattern)s).", code="mrn_format", params={"pattern": pattern}
        )


def validate_date_of_birth(value: datetime.date) -> None:
    today = timezone.localdate()
    if value > today:
        raise ValidationError("The date of birth is in the future.", code="future")
    years = int(getattr(settings, "PORTAL_MAX_AGE_YEARS", 130))
    try:
        oldest = today.replace(year=today.year - years)
    except ValueError:  # 29 February
        oldest = today.replace(year=today.year - years, day=28)
    if value < oldest:
        raise ValidationError(
            "The date of birth is more than %(years)s years ago; check the year.",
            code="too_old",
            params={"years": years},
        )
