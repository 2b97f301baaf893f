"""Per-request responses of a TorchServe batch: one JSON body and HTTP status per request.

Both handlers (:mod:`handlers.leukemia_handler`, :mod:`handlers.cells_handler`) answer every row of a
batch with a success body (200) or a :class:`~core.errors.RequestError` (its contract 4xx/500), set
with ``context.set_response_status(code, phrase, idx)`` so one bad image never fails its batch-mates;
a v2 request gets its answer in v2 form (:mod:`core.v2`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from core.decode import request_json
from core.errors import RequestError
from core.v2 import to_v2, v2_error, v2_request

__all__ = ["request_header", "respond"]


def request_header(context: Any, idx: int, name: str) -> str | None:
    """A request header of row ``idx`` (None when absent or when the context has no headers)."""
    try:
        value = context.get_request_header(idx, name)
    except (AttributeError, IndexError, KeyError):
        return None
    return None if value is None else str(value)


def respond(
    results: Sequence[dict[str, Any] | RequestError], context: Any, rows: Sequence[Any] | None = None
) -> list[str]:
    """Set each row's status and content type; return the compact JSON bodies in row order.

    A row that was an Open Inference Protocol (v2) request (``rows`` given) is answered in v2 form.
    """
    out: list[str] = []
    for i, result in enumerate(results):
        context.set_response_content_type(i, "application/json")
        request = v2_request(request_json(rows[i])) if rows is not None else None
        if isinstance(result, RequestError):
            context.set_response_status(result.status, result.phrase, i)
            body = v2_error(result) if request is not None else result.to_dict()
        else:
            context.set_response_status(200, "OK", i)
            body = to_v2(result, request) if request is not None else result
        # Compact JSON (TorchServe would pretty-print a dict with indent=2).
        out.append(json.dumps(body, separators=(",", ":")))
    return out
