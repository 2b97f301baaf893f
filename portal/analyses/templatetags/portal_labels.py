"""Words for people in the templates.

``{{ label|class_name }}`` gives a leukemia class's full name (Early -> Early Pre-B ALL);
``{{ differential.rows|counts_text }}`` the cell types found, with their counts ("Lymphocyte 2, Neutrophil 1").

The names come from the model registry (core.registry.CLASS_DESCRIPTIONS) through
portal.analyses.conclusion.class_description, which the FHIR export and the sign-off forms also use;
anything else (an empty label, an unknown code) is shown as is.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django import template

from portal.analyses.conclusion import class_description

register = template.Library()


def class_name(label: str | None) -> str:
    """The class's full name; the label itself when it is not a class (empty stays empty)."""
    return class_description(label)


register.filter("class_name", class_name)


def counts_text(rows: Iterable[Any] | None) -> str:
    """The rows of a differential (portal.analyses.differential) that counted a cell: "Type n, Type n"."""
    return ", ".join(f"{row.description} {row.count}" for row in rows or () if row.count)


register.filter("counts_text", counts_text)
