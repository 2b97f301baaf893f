"""Standard codes the exports use (FHIR, portal.analyses.fhir): LOINC where a code exists and was verified.

Every code below was checked against a terminology source, never typed from memory (the first code
typed from memory for blasts, 26446-3, was wrong: it is 26446-5, and its check digit says so). loinc.org
itself could not be reached from the development machine; the sources read were:

- loinc.org's own page of the **Manual Differential panel - Blood (24318-8)**, LOINC 2.78, which lists its
  member terms with their codes (https://loinc.org/24318-8);
- the HL7 mCODE implementation guide's FHIR Shorthand source (value set ``CBCVS``, "LOINC codes typical of
  a Complete Blood Count", copyright notice of LOINC 1995-2020), which lists the same member terms;
- for immature granulocytes, two independent LOINC mappings that agree on 38518-7 being the term without a
  method, and a LOINC code page (healthassure.in) showing that 71695-1 is the one "by Automated count";
- for the white cells counted, 11282-1 as "Cells Counted Total [#] in Blood" in a LOINC table extract and
  in a FHIR value set.

The terms chosen carry no method ("in Blood", neither "by Manual count" nor "by Automated count"): the
count is the cell model's, checked and corrected cell by cell by a technologist, which is neither of the
two. Each code's check digit (LOINC's mod 10) is verified by tests/portal/test_fhir_codes.py.

**Not coded (text only)**, because no term was found or sources disagreed:

- nucleated red cells per 100 white cells: the sources name 19048-8 "by Automated count" and give
  58413-6 two different meanings (a concentration and a fraction), so no code is used;
- platelets: LOINC's platelet terms are concentrations (per volume of blood); the portal counts platelets
  seen in the frames, which is not one;
- unclassified white cells and artefacts: no LOINC term;
- the B-ALL subtype of a frame and the specimen's class: the portal's own code system
  (portal.analyses.fhir.CLASS_SYSTEM); no SNOMED CT concept was verified for them, so
  DiagnosticReport.conclusionCode is left out and the conclusion is text;
- the DiagnosticReport itself (a code for the report was not verified: its code is text).
"""

from __future__ import annotations

from typing import Any

__all__ = ["CELLS_COUNTED", "LOINC_SYSTEM", "PERCENT_OF_LEUKOCYTES", "loinc_check_digit", "loinc_coding"]

LOINC_SYSTEM = "http://loinc.org"

#: cell type (core.registry.CELL_CLASSES) -> (LOINC code, LOINC long common name) of "<type>/100 leukocytes
#: in Blood" (property NFr, unit %), the member terms of the Manual Differential panel 24318-8.
PERCENT_OF_LEUKOCYTES: dict[str, tuple[str, str]] = {
    "basophil": ("30180-4", "Basophils/100 leukocytes in Blood"),  # loinc.org/24318-8; mCODE CBCVS
    "blast": ("26446-5", "Blasts/100 leukocytes in Blood"),  # loinc.org/24318-8; mCODE CBCVS
    "eosinophil": ("26450-7", "Eosinophils/100 leukocytes in Blood"),  # loinc.org/24318-8; mCODE CBCVS
    "ig": ("38518-7", "Immature granulocytes/100 leukocytes in Blood"),  # two LOINC mappings (see above)
    "lymphocyte": ("26478-8", "Lymphocytes/100 leukocytes in Blood"),  # mCODE CBCVS; FHIR examples
    "monocyte": ("26485-3", "Monocytes/100 leukocytes in Blood"),  # mCODE CBCVS; LOINC code page
    "neutrophil": ("26511-6", "Neutrophils/100 leukocytes in Blood"),  # mCODE CBCVS; LOINC mappings
}
#: the white cells counted (the differential's denominator): a LOINC table extract; a FHIR value set
CELLS_COUNTED: tuple[str, str] = ("11282-1", "Cells Counted Total [#] in Blood")


def loinc_check_digit(number: str) -> int:
    """LOINC's mod 10 check digit of the part before the hyphen (the Luhn algorithm)."""
    total = 0
    for position, char in enumerate(reversed(number)):
        digit = int(char)
        if position % 2 == 0:  # the rightmost digit and every second one after it are doubled
            digit *= 2
        total += digit // 10 + digit % 10
    return (10 - total % 10) % 10


def loinc_coding(code: tuple[str, str]) -> dict[str, Any]:
    """A FHIR Coding of a LOINC term; ValueError for a code whose check digit is wrong."""
    number, _, check = code[0].partition("-")
    if not number.isdigit() or not check.isdigit() or loinc_check_digit(number) != int(check):
        raise ValueError(f"{code[0]} is not a valid LOINC code (check digit)")
    return {"system": LOINC_SYSTEM, "code": code[0], "display": code[1]}
