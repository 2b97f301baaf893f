"""Reading a model server's JSON answer against the contract (docs/guides/serving.md): the field readers that
:meth:`core.prediction.FramePrediction.parse` and :meth:`core.cell_answer.CellAnswer.parse` share.

Each reader takes the answer object, a key and the path of that object in the answer (for the error
message) and returns the value with the contract's type, or raises :class:`ContractError` naming the
field and what was wrong. Keys the contract does not know are ignored, so that a model server adding a
field does not break a reader of the previous contract; a key it requires may not be missing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = [
    "ContractError",
    "obj",
    "text",
    "optional_text",
    "number",
    "optional_number",
    "integer",
    "optional_integer",
    "boolean",
    "number_map",
    "json_object",
    "int_list",
    "points",
]


class ContractError(ValueError):
    """A model answer that breaks the contract (a missing key, a value of the wrong type or out of range)."""


_MISSING = object()


def _get(body: Mapping[str, Any], key: str, where: str) -> Any:
    value = body.get(key, _MISSING)
    if value is _MISSING:
        raise ContractError(f"{where}: {key!r} is missing")
    return value


def _wrong(where: str, key: str, expected: str, value: Any) -> ContractError:
    return ContractError(f"{where}: {key!r} should be {expected}, not {type(value).__name__} {value!r:.60}")


def obj(value: Any, where: str) -> Mapping[str, Any]:
    """``value`` as a JSON object (``where`` names it in the error)."""
    if not isinstance(value, Mapping):
        raise ContractError(f"{where} should be a JSON object, not {type(value).__name__}")
    return value


def text(body: Mapping[str, Any], key: str, where: str) -> str:
    value = _get(body, key, where)
    if not isinstance(value, str):
        raise _wrong(where, key, "a string", value)
    return value


def optional_text(body: Mapping[str, Any], key: str, where: str, *, required: bool = True) -> str | None:
    """A string or null (``required=False``: the key may also be absent)."""
    value = _get(body, key, where) if required else body.get(key)
    if value is not None and not isinstance(value, str):
        raise _wrong(where, key, "a string or null", value)
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def number(body: Mapping[str, Any], key: str, where: str) -> float:
    value = _get(body, key, where)
    if not _is_number(value):
        raise _wrong(where, key, "a finite number", value)
    return value  # as sent (an int stays an int), so that to_json writes back the same JSON


def optional_number(body: Mapping[str, Any], key: str, where: str) -> float | None:
    value = _get(body, key, where)
    return None if value is None else number(body, key, where)


def integer(body: Mapping[str, Any], key: str, where: str) -> int:
    value = _get(body, key, where)
    if not isinstance(value, int) or isinstance(value, bool):
        raise _wrong(where, key, "an integer", value)
    return value


def optional_integer(body: Mapping[str, Any], key: str, where: str, *, required: bool = True) -> int | None:
    if not required and key not in body:
        return None
    value = _get(body, key, where)
    return None if value is None else integer(body, key, where)


def boolean(body: Mapping[str, Any], key: str, where: str) -> bool:
    value = _get(body, key, where)
    if not isinstance(value, bool):
        raise _wrong(where, key, "true or false", value)
    return value


def number_map(body: Mapping[str, Any], key: str, where: str) -> dict[str, float]:
    """A JSON object of finite numbers (probabilities, timings), its key order kept."""
    value = obj(_get(body, key, where), f"{where}.{key}")
    out: dict[str, float] = {}
    for name, v in value.items():
        if not _is_number(v):
            raise _wrong(f"{where}.{key}", str(name), "a finite number", v)
        out[str(name)] = v
    return out


def json_object(body: Mapping[str, Any], key: str, where: str) -> dict[str, Any]:
    """A JSON object of any values (``quality``), copied."""
    return dict(obj(_get(body, key, where), f"{where}.{key}"))


def int_list(body: Mapping[str, Any], key: str, where: str, length: int | None = None) -> list[int]:
    value = _get(body, key, where)
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise _wrong(where, key, "a list of integers", value)
    if length is not None and len(value) != length:
        raise ContractError(f"{where}: {key!r} should hold {length} integers, not {len(value)}")
    return list(value)


def points(body: Mapping[str, Any], key: str, where: str) -> list[list[int]]:
    """A polygon: a list of ``[x, y]`` integer pairs."""
    value = _get(body, key, where)
    if not isinstance(value, list):
        raise _wrong(where, key, "a list of [x, y] points", value)
    out = []
    for i, point in enumerate(value):
        if (
            not isinstance(point, list)
            or len(point) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in point)
        ):
            raise ContractError(f"{where}.{key}[{i}] should be an [x, y] pair of integers, not {point!r:.60}")
        out.append([point[0], point[1]])
    return out
