"""Page-number pagination that refuses a ``page`` the schema does not allow.

DRF reads ``?page=`` leniently: an empty or repeated ``page`` answers the first page (200), a word or 0
answers 404 "Invalid page". The contract (portal.api.schema) says ``page`` is one integer from 1: any
other value answers 400 naming the parameter; a page past the last answers 404, as before.
"""

from __future__ import annotations

import re
from typing import Any

from rest_framework.exceptions import ValidationError
from rest_framework.pagination import PageNumberPagination

__all__ = ["MAX_PAGE", "StrictPageNumberPagination"]

#: the largest page number accepted (keeps the number a 32-bit integer everywhere)
MAX_PAGE = 2**31 - 1
_PAGE = re.compile(r"[1-9][0-9]{0,9}")


class StrictPageNumberPagination(PageNumberPagination):
    def paginate_queryset(self, queryset: Any, request: Any, view: Any = None) -> Any:
        values = request.query_params.getlist(self.page_query_param)
        if len(values) > 1:
            raise ValidationError({self.page_query_param: ["Give one page number, not several."]}, code="invalid")
        if values and not (_PAGE.fullmatch(values[0]) and int(values[0]) <= MAX_PAGE):
            raise ValidationError(
                {self.page_query_param: [f"A page number is a whole number from 1 to {MAX_PAGE}."]}, code="invalid"
            )
        return super().paginate_queryset(queryset, request, view)

    def get_schema_operation_parameters(self, view: Any) -> list[dict[str, Any]]:
        parameters = super().get_schema_operation_parameters(view)
        for parameter in parameters:
            if parameter["name"] == self.page_query_param:
                parameter["schema"] = {"type": "integer", "minimum": 1, "maximum": MAX_PAGE}
                parameter["description"] = "A page number (from 1; a page past the last answers 404)."
        return parameters
