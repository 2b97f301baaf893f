"""Request errors of the public inference contract (docs/guides/serving.md).

Every refusal is a JSON object ``{"code": ..., "message": ...}`` (plus optional detail fields such
as the smear-gate ``score`` and ``threshold``) sent with a 4xx HTTP status. The code is the stable,
machine-readable part; the status follows HTTP semantics:

==================== ====== ==========================================================
code                 status meaning
==================== ====== ==========================================================
``bad_request``       400   empty body, invalid base64, JSON without ``image``, ...
``not_an_image``      415   not a JPEG/PNG/BMP/TIFF still image (text, PDF, GIF, ...)
``image_too_small``   422   a side is under the minimum (64 px)
``image_too_large``   413   more pixels or bytes than allowed (incl. decompression bombs)
``not_a_blood_smear`` 422   the smear gate refused it (``score`` and ``threshold`` given)
``internal_error``    500   a bug on our side; never used for bad input
==================== ====== ==========================================================
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

__all__ = ["ERROR_STATUS", "RequestError", "error_body"]

ERROR_STATUS: dict[str, int] = {
    "bad_request": 400,
    "not_an_image": 415,
    "image_too_small": 422,
    "image_too_large": 413,
    "not_a_blood_smear": 422,
    "internal_error": 500,
}


class RequestError(Exception):
    """A refusal of one request: carries the contract's code, a human message and extra fields."""

    def __init__(self, code: str, message: str, **details: Any) -> None:
        if code not in ERROR_STATUS:
            raise ValueError(f"unknown error code {code!r}")
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details

    @property
    def status(self) -> int:
        return ERROR_STATUS[self.code]

    @property
    def phrase(self) -> str:
        return HTTPStatus(self.status).phrase

    def to_dict(self) -> dict[str, Any]:
        return error_body(self.code, self.message, **self.details)

    @classmethod
    def from_json(cls, body: Any) -> RequestError:
        """A refusal's JSON body read back (the frame and cell answers' refusal form); ValueError (a
        ``core.contract.ContractError`` from core.prediction's readers is one too) when it is not one."""
        if (
            not isinstance(body, dict)
            or not isinstance(body.get("code"), str)
            or not isinstance(body.get("message"), str)
        ):
            raise ValueError(f"not a refusal body ({{'code': str, 'message': str, ...}}): {body!r:.80}")
        details = {k: v for k, v in body.items() if k not in ("code", "message")}
        return cls(body["code"], body["message"], **details)  # ValueError for a code the contract does not know


def error_body(code: str, message: str, **details: Any) -> dict[str, Any]:
    """The JSON body of a refusal."""
    body: dict[str, Any] = {"code": code, "message": message}
    body.update(details)
    return body
