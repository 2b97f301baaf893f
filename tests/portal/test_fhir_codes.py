"""The standard codes the FHIR export uses (portal.analyses.terminology): every LOINC code's check digit holds,
each white-cell type has the LOINC term it is reported with or is named as text only, and nothing typed
elsewhere bypasses the table."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from core.registry import LEUKOCYTE_CLASSES
from portal.analyses.terminology import (
    CELLS_COUNTED,
    LOINC_SYSTEM,
    PERCENT_OF_LEUKOCYTES,
    loinc_check_digit,
    loinc_coding,
)

REPO = Path(__file__).resolve().parents[2]


def test_the_check_digit_is_loincs_mod_10() -> None:
    # LOINC's own worked example: 12345 -> check digit 5; and codes whose digits are known
    assert loinc_check_digit("12345") == 5
    assert loinc_check_digit("6690") == 2  # 6690-2 Leukocytes [#/volume] in Blood by Automated count
    assert loinc_check_digit("26446") == 5  # not 3: the code first typed from memory for blasts was wrong
    with pytest.raises(ValueError, match="check digit"):
        loinc_coding(("26446-3", "Blasts/100 leukocytes in Blood"))


@pytest.mark.parametrize("code", [*PERCENT_OF_LEUKOCYTES.values(), CELLS_COUNTED], ids=lambda c: c[0])
def test_every_code_is_a_valid_loinc_code(code: tuple[str, str]) -> None:
    coding = loinc_coding(code)
    assert coding["system"] == LOINC_SYSTEM and re.fullmatch(r"\d{1,7}-\d", coding["code"])
    assert coding["display"].endswith("in Blood") and "Manual" not in coding["display"]


def test_every_white_cell_type_is_coded_or_said_to_be_text_only() -> None:
    coded = set(PERCENT_OF_LEUKOCYTES)
    assert coded == set(LEUKOCYTE_CLASSES), "a new white-cell type needs its LOINC term verified (or a text-only note)"
    assert PERCENT_OF_LEUKOCYTES["blast"] == ("26446-5", "Blasts/100 leukocytes in Blood")
    assert all(
        display.startswith(
            ("Basophils", "Blasts", "Eosinophils", "Immature granulocytes", "Lymphocytes", "Monocytes", "Neutrophils")
        )
        for _, display in PERCENT_OF_LEUKOCYTES.values()
    )


def test_no_loinc_code_is_typed_outside_the_table() -> None:
    """One source of truth: the exports import their codes from portal.analyses.terminology."""
    for path in (REPO / "portal").rglob("*.py"):
        if path.name == "terminology.py" or "migrations" in path.parts:
            continue
        text = path.read_text()
        assert "loinc.org" not in text, f"{path}: a LOINC code outside portal/analyses/terminology.py"
