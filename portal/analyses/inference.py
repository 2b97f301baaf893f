"""Client for TorchServe's inference API (the contract: docs/serving.md).

One call per image and model: ``POST /explanations/{model}`` answers the prediction (the same body
as ``/predictions``, ``label`` null when the model abstains) and its Grad-CAM heatmap from one
forward pass. Every call returns an outcome instead of raising, so the caller maps it onto an
analysis state: ``Prediction`` -> done, ``Refusal`` (4xx with a contract code) -> rejected,
``ServerError`` (5xx, timeouts, unexpected answers) -> retried with backoff, then failed,
``Unreachable`` (connection refused) -> waits for the model server.

The cell model answers ``POST /predictions/{model}`` with the header ``annotate: 1`` (every white cell with its box,
outlines and type, and the annotated image): ``CellPrediction`` -> done, the other outcomes as above.
"""

from __future__ import annotations

import base64
import binascii
import time
from dataclasses import dataclass
from typing import Any

import requests
from django.conf import settings

from core.errors import ERROR_STATUS
from serving.torchserve import read_keys

__all__ = [
    "REFUSAL_CODES",
    "CellPrediction",
    "Outcome",
    "Prediction",
    "Refusal",
    "ServerError",
    "TorchServeClient",
    "Unreachable",
    "inference_key",
]

#: The contract's refusal codes: the model server judged the image (4xx), retrying cannot help.
REFUSAL_CODES = frozenset(code for code, status in ERROR_STATUS.items() if 400 <= status < 500)


@dataclass(frozen=True)
class Prediction:
    body: dict[str, Any]
    latency_ms: float
    heatmap_png: bytes | None = None  # the Grad-CAM overlay, when the answer carried one
    explained_class: str = ""  # the class the heatmap explains (the most probable one)


@dataclass(frozen=True)
class CellPrediction:
    body: dict[str, Any]  # the answer without its annotated image: cells, counts, model, version, timing_ms
    latency_ms: float
    annotated_png: bytes | None = None


@dataclass(frozen=True)
class Refusal:
    code: str
    message: str


@dataclass(frozen=True)
class ServerError:
    message: str


@dataclass(frozen=True)
class Unreachable:
    message: str


Outcome = Prediction | Refusal | ServerError | Unreachable
CellOutcome = CellPrediction | Refusal | ServerError | Unreachable


def inference_key() -> str:
    """The inference API key: TORCHSERVE_KEY, else the current key in TorchServe's key file.

    The key file lives in the TorchServe working directory (TORCHSERVE_WORKDIR, as serving.torchserve
    starts it); empty when TorchServe is not running.
    """
    if settings.TORCHSERVE_KEY:
        return str(settings.TORCHSERVE_KEY)
    try:
        return read_keys(settings.TORCHSERVE_WORKDIR).inference
    except (OSError, ValueError, KeyError):
        return ""


class TorchServeClient:
    """Thin typed wrapper over ``POST /predictions/{model}`` and ``POST /explanations/{model}``."""

    def __init__(self, base_url: str | None = None, key: str | None = None) -> None:
        self.base_url = (base_url or settings.TORCHSERVE_URL).rstrip("/")
        self.key = inference_key() if key is None else key
        self.timeout = (settings.TORCHSERVE_CONNECT_TIMEOUT_S, settings.TORCHSERVE_READ_TIMEOUT_S)

    def _post(
        self, endpoint: str, model: str, data: bytes, extra_headers: dict[str, str] | None = None
    ) -> requests.Response | Unreachable | ServerError:
        response = self._post_once(endpoint, model, data, extra_headers)
        if isinstance(response, requests.Response) and _key_refused(response) and not settings.TORCHSERVE_KEY:
            self.key = inference_key()  # keys expire and rotate: re-read the key file once
            response = self._post_once(endpoint, model, data, extra_headers)
        return response

    def _post_once(
        self, endpoint: str, model: str, data: bytes, extra_headers: dict[str, str] | None = None
    ) -> requests.Response | Unreachable | ServerError:
        # TorchServe hands the handler the body and the headers, never the query string
        headers = {"Content-Type": "application/octet-stream", **(extra_headers or {})}
        if self.key:
            headers["Authorization"] = f"Bearer {self.key}"
        try:
            return requests.post(
                f"{self.base_url}/{endpoint}/{model}", data=data, headers=headers, timeout=self.timeout
            )
        except requests.ConnectTimeout as exc:
            return Unreachable(f"model server did not accept the connection: {exc.__class__.__name__}")
        except requests.Timeout:
            return ServerError(f"model server timed out after {self.timeout[1]:.0f} s")
        except requests.ConnectionError as exc:
            return Unreachable(f"model server unreachable at {self.base_url}: {exc.__class__.__name__}")
        except requests.RequestException as exc:
            return ServerError(f"request to the model server failed: {exc}")

    def analyze(self, model: str, data: bytes) -> Outcome:
        """Prediction and heatmap of one image, in one request (``/explanations/{model}``)."""
        start = time.perf_counter()
        response = self._post("explanations", model, data)
        if not isinstance(response, requests.Response):
            return response
        latency_ms = (time.perf_counter() - start) * 1000.0
        body = _json_or_none(response)
        if response.status_code == 200 and isinstance(body, dict) and "probabilities" in body:
            png = _png_or_none(body.pop("overlay_png_base64", None))
            body.pop("grid", None)  # the overlay carries it; the grid is for other services
            if png is None:
                return ServerError("the model server's heatmap is not a valid base64 PNG")
            return Prediction(
                body=body, latency_ms=latency_ms, heatmap_png=png, explained_class=str(body.get("explained_class", ""))
            )
        if 400 <= response.status_code < 500 and isinstance(body, dict) and body.get("code") in REFUSAL_CODES:
            return Refusal(code=str(body["code"]), message=str(body.get("message", "")))
        return ServerError(_describe_error(response, body))

    def cells(self, model: str, data: bytes) -> CellOutcome:
        """Every white cell in one image, with the annotated image, in one request (``/predictions/{model}``)."""
        start = time.perf_counter()
        response = self._post("predictions", model, data, {"annotate": "1"})
        if not isinstance(response, requests.Response):
            return response
        latency_ms = (time.perf_counter() - start) * 1000.0
        body = _json_or_none(response)
        if response.status_code == 200 and isinstance(body, dict) and isinstance(body.get("cells"), list):
            encoded = body.pop("annotated_png", None)
            png = _png_or_none(encoded)
            if encoded is not None and png is None:
                return ServerError("the model server's annotated image is not a valid base64 PNG")
            return CellPrediction(body=body, latency_ms=latency_ms, annotated_png=png)
        if 400 <= response.status_code < 500 and isinstance(body, dict) and body.get("code") in REFUSAL_CODES:
            return Refusal(code=str(body["code"]), message=str(body.get("message", "")))
        return ServerError(_describe_error(response, body))

    def ping(self) -> tuple[bool, str]:
        """(healthy, detail) from TorchServe's ``/ping`` (which needs the inference key)."""
        headers = {"Authorization": f"Bearer {self.key}"} if self.key else {}
        try:
            response = requests.get(f"{self.base_url}/ping", headers=headers, timeout=2)
        except requests.RequestException as exc:
            return False, f"unreachable at {self.base_url}: {exc.__class__.__name__}"
        body = _json_or_none(response)
        healthy = response.status_code == 200 and isinstance(body, dict) and body.get("status") == "Healthy"
        return healthy, f"HTTP {response.status_code}" + (f" {body.get('status')}" if isinstance(body, dict) else "")


def _png_or_none(encoded: Any) -> bytes | None:
    if not isinstance(encoded, str):
        return None
    try:
        png = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        return None
    return png if png.startswith(b"\x89PNG") else None


def _key_refused(response: requests.Response) -> bool:
    """TorchServe 0.12 refuses a missing, wrong or expired key with HTTP 400 InvalidKeyException."""
    if response.status_code == 401:
        return True
    body = _json_or_none(response)
    return response.status_code == 400 and isinstance(body, dict) and body.get("type") == "InvalidKeyException"


def _json_or_none(response: requests.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _describe_error(response: requests.Response, body: Any) -> str:
    detail = ""
    if isinstance(body, dict):
        detail = str(body.get("message") or body.get("type") or body.get("code") or "")
    elif response.text:
        detail = response.text[:200]
    return f"model server answered HTTP {response.status_code}" + (f": {detail}" if detail else "")
