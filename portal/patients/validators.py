"""Patient data as a lab checks it, one set of rules for forms, the API and Django admin.

The rules are model field validators, so every path that validates a model (ModelForm, DRF's
ModelSerializer, admin, ``full_clean`` in portal.actions) applies the same ones:

- text (MRN, names, accession numbers): no control, format, surrogate or private-use characters
  (tabs, newlines, NUL, zero-width characters, bidirectional overrides, tag characters ...: Unicode
  categories Cc, Cf, Cs, Co below plane 15), no leading or trailing spaces, not empty;
- MRN: additionally matches ``PORTAL_MRN_PATTERN`` when a lab configures one (default: any printable
  text, since MRN formats differ from lab to lab);
- date of birth: not in the future, and not more than ``PORTAL_MAX_AGE_YEARS`` (default 130) ago.

Each rule is also a JSON-schema fragment (:func:`portal.contract.schema_rule`), so that the API schema
says exactly what is refused: text fields get :data:`PRINTABLE_PATTERNS` (built from the same
Unicode categories the check reads, so the two cannot disagree; the API does not strip text, so
surrounding spaces are refused there rather than removed), the MRN the lab's pattern as well, the date of
birth a pattern of the dates from the oldest allowed to today (rebuilt with every schema).
"""

from __future__ import annotations

import datetime
import re
import sys
import unicodedata
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.utils import timezone

from portal.contract import schema_rule

__all__ = [
    "PRINTABLE_PATTERNS",
    "date_range_pattern",
    "validate_date_of_birth",
    "validate_mrn",
    "validate_printable",
]


#: control, format (invisible: zero-width, bidirectional overrides ...), surrogate and private-use characters
REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co"})


#: the supplementary private-use planes (15 and 16): let through, see :func:`_refused`
_SUPPLEMENTARY_PRIVATE_USE = 0xF0000


def _refused(ch: str) -> bool:
    """A character the text fields refuse. Private-use characters of planes 15 and 16 are let through:
    no keyboard or scanner produces them, and the 131,068 code points make the published pattern
    unusable for schema tooling (schemathesis drew 30 examples in 14 s with them, 1.3 s without)."""
    return unicodedata.category(ch) in REFUSED_CATEGORIES and ord(ch) < _SUPPLEMENTARY_PRIVATE_USE


def _char_class(test: Any) -> str:
    """A regex character class body of the code points ``test`` accepts (BMP as \\uXXXX escapes, which
    both ECMA-262 and Python read; the rest as the characters themselves)."""
    ranges: list[list[int]] = []
    for cp in range(sys.maxunicode + 1):
        if 0xD800 <= cp <= 0xDFFF:  # surrogates: no Unicode string holds one (and regex engines refuse them)
            continue
        if test(chr(cp)):
            if ranges and ranges[-1][1] == cp - 1 and cp != 0x10000:
                ranges[-1][1] = cp
            else:
                ranges.append([cp, cp])

    def one(cp: int) -> str:
        return f"\\u{cp:04x}" if cp <= 0xFFFF else chr(cp)

    return "".join(one(a) if a == b else f"{one(a)}-{one(b)}" for a, b in ranges)


def _bmp(ch: str) -> bool:
    return ord(ch) <= 0xFFFF


_CONTROL = _char_class(lambda ch: _refused(ch) and _bmp(ch))
_CONTROL_OR_SPACE = _char_class(lambda ch: (_refused(ch) or ch.isspace()) and _bmp(ch))
_ASTRAL_CONTROL = _char_class(lambda ch: _refused(ch) and not _bmp(ch))
#: what validate_printable accepts, in two patterns that must both match: the BMP part (no refused
#: character, no surrounding space, not empty) and the few refused characters beyond the BMP (format
#: characters: tags, musical and hieroglyph controls). Two patterns because schema tools (schemathesis
#: 4.32) cannot combine characters beyond the BMP with the rest in one pattern; a pattern engine reading
#: UTF-16 code units (ECMA-262 without the u flag) reads the second as surrogate halves and refuses more
#: than the server does.
PRINTABLE_PATTERNS = (
    f"^[^{_CONTROL_OR_SPACE}](?:[^{_CONTROL}]*[^{_CONTROL_OR_SPACE}])?$",
    f"^[^{_ASTRAL_CONTROL}]*$",
)
_PRINTABLE_ALL_OF = [{"pattern": p} for p in PRINTABLE_PATTERNS]
_PRINTABLE_SCHEMA: dict[str, Any] = {"minLength": 1, "allOf": _PRINTABLE_ALL_OF}


@schema_rule(_PRINTABLE_SCHEMA)
def validate_printable(value: str) -> None:
    if not isinstance(value, str):
        return
    bad = sorted({f"U+{ord(ch):04X}" for ch in value if _refused(ch)})
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


def _mrn_schema() -> dict[str, Any]:
    pattern = getattr(settings, "PORTAL_MRN_PATTERN", "")
    if not pattern:
        return _PRINTABLE_SCHEMA
    lab = {"pattern": f"^(?:{pattern})$"}
    return {"minLength": 1, "allOf": [*_PRINTABLE_ALL_OF, lab]}


@schema_rule(_mrn_schema)
def validate_mrn(value: str) -> None:
    validate_printable(value)
    pattern = getattr(settings, "PORTAL_MRN_PATTERN", "")
    if pattern and not re.fullmatch(pattern, value):
        raise ValidationError(
            "The MRN does not have this lab's format (%(pattern)s).", code="mrn_format", params={"pattern": pattern}
        )


def _oldest_birth_date(today: datetime.date) -> datetime.date:
    years = int(getattr(settings, "PORTAL_MAX_AGE_YEARS", 130))
    try:
        return today.replace(year=today.year - years)
    except ValueError:  # 29 February
        return today.replace(year=today.year - years, day=28)


def _two_digits(numbers: range) -> str:
    return "(?:" + "|".join(f"{n:02d}" for n in numbers) + ")"


def _within_year(year: int, first: tuple[int, int], last: tuple[int, int]) -> list[str]:
    """Regex alternatives for the (month, day)s from ``first`` to ``last`` of ``year``."""
    (m1, d1), (m2, d2) = first, last
    y = f"{year:04d}"
    if m1 == m2:
        return [f"{y}-{m1:02d}-{_two_digits(range(d1, d2 + 1))}"]
    parts = [f"{y}-{m1:02d}-{_two_digits(range(d1, 32))}"]
    if m2 - m1 > 1:
        parts.append(f"{y}-{_two_digits(range(m1 + 1, m2))}-{_two_digits(range(1, 32))}")
    return parts + [f"{y}-{m2:02d}-{_two_digits(range(1, d2 + 1))}"]


def date_range_pattern(oldest: datetime.date, newest: datetime.date) -> str:
    """A regex of the ISO dates (YYYY-MM-DD) from ``oldest`` to ``newest``, both included; whether a day
    exists in its month (30 February) is left to ``format: date``."""
    start, end = (oldest.month, oldest.day), (newest.month, newest.day)
    if oldest.year == newest.year:
        parts = _within_year(oldest.year, start, end)
    else:
        parts = _within_year(oldest.year, start, (12, 31))
        if newest.year - oldest.year > 1:
            years = "|".join(f"{y:04d}" for y in range(oldest.year + 1, newest.year))
            parts.append(f"(?:{years})-{_two_digits(range(1, 13))}-{_two_digits(range(1, 32))}")
        parts += _within_year(newest.year, (1, 1), end)
    return "^(?:" + "|".join(parts) + ")$"


def _date_of_birth_schema() -> dict[str, Any]:
    today = timezone.localdate()
    return {"pattern": date_range_pattern(_oldest_birth_date(today), today)}


@schema_rule(_date_of_birth_schema)
def validate_date_of_birth(value: datetime.date) -> None:
    today = timezone.localdate()
    if value > today:
        raise ValidationError("The date of birth is in the future.", code="future")
    if value < _oldest_birth_date(today):
        raise ValidationError(
            "The date of birth is more than %(years)s years ago; check the year.",
            code="too_old",
            params={"years": int(getattr(settings, "PORTAL_MAX_AGE_YEARS", 130))},
        )
