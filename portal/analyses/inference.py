"""Client for the models' inference API: TorchServe's REST contract, or the Open Inference Protocol.

One call per image and model: the prediction (the same body as ``/predictions``, ``label`` null when
the model abstains) and its Grad-CAM heatmap from one forward pass. Every call returns an outcome
instead of raising, so the caller maps it onto an analysis state: ``Prediction`` -> done, ``Refusal``
(4xx with a contract code) -> rejected, ``ServerError`` (5xx, timeouts, unexpected answers) -> retried
with backoff, then failed, ``Unreachable`` (connection refused; 502, 503 or 504: a proxy with nothing
behind it, or TorchServe with no worker for the model; KServe's 500 saying that its predictor refused
the connection) -> waits for the model server.

The cell model answers with every white cell (box, outlines and type) and the annotated image:
``CellPrediction`` -> done, the other outcomes as above.

Two protocols (``PORTAL_INFERENCE_PROTOCOL``), each model at its own base URL where
``PORTAL_MODEL_URLS`` names one (else ``TORCHSERVE_URL``):

- ``torchserve`` (the default): ``POST /explanations/{model}`` for a frame classifier,
  ``POST /predictions/{model}`` with the header ``annotate: 1`` for the cell model (docs/guides/serving.md);
- ``v2``: ``POST /v2/models/{model}/infer`` with the image as a BYTES input and ``parameters``
  ``{"explain": true}`` or ``{"annotate": true}`` (:mod:`core.v2`), as KServe's predictors (one host
  per model) and TorchServe itself answer it. Behind KServe a refusal arrives as KServe's HTTP 500
  with the handler's error text, which starts with the contract's code: it is still a ``Refusal``.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import requests
from django.conf import settings

from core.errors import ERROR_STATUS
from core.v2 import error_code, image_request, result_body
from serving.torchserve import read_keys

__all__ = [
    "REFUSAL_CODES",
    "CellPrediction",
    "Outcome",
    "Prediction",
    "Refusal",
    "ServerError",
    "INFERENCE_PROTOCOLS",
    "ModelClient",
    "Unreachable",
    "inference_key",
]

#: ``PORTAL_INFERENCE_PROTOCOL``: TorchServe's REST contract, or the Open Inference Protocol (v2)
INFERENCE_PROTOCOLS = ("torchserve", "v2")
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


class ModelClient:
    """Thin typed wrapper over the models' inference API (see the module docstring for the protocols)."""

    def __init__(
        self,
        base_url: str | None = None,
        key: str | None = None,
        protocol: str | None = None,
        model_urls: dict[str, str] | None = None,
    ) -> None:
        self.base_url = (base_url or settings.TORCHSERVE_URL).rstrip("/")
        self.model_urls = {
            m: u.rstrip("/") for m, u in (settings.PORTAL_MODEL_URLS if model_urls is None else model_urls).items()
        }
        self.protocol = protocol or settings.PORTAL_INFERENCE_PROTOCOL
        if self.protocol not in INFERENCE_PROTOCOLS:
            raise ValueError(f"unknown inference protocol {self.protocol!r}; one of {INFERENCE_PROTOCOLS}")
        self.key = inference_key() if key is None else key
        self.timeout = (settings.TORCHSERVE_CONNECT_TIMEOUT_S, settings.TORCHSERVE_READ_TIMEOUT_S)

    def url_for(self, model: str) -> str:
        """The base URL that serves ``model``."""
        return self.model_urls.get(model, self.base_url)

    def _post(self, model: str, data: bytes, flag: str) -> requests.Response | Unreachable | ServerError:
        """One request for ``model`` asking for ``flag`` (``explain`` or ``annotate``), in the client's
        protocol; a refused TorchServe key is re-read and the request sent once more."""
        response = self._post_once(model, data, flag)
        if isinstance(response, requests.Response) and _key_refused(response) and not settings.TORCHSERVE_KEY:
            self.key = inference_key()  # keys expire and rotate: re-read the key file once
            response = self._post_once(model, data, flag)
        return response

    def _post_once(self, model: str, data: bytes, flag: str) -> requests.Response | Unreachable | ServerError:
        base = self.url_for(model)
        headers = {"Authorization": f"Bearer {self.key}"} if self.key else {}
        if self.protocol == "v2":
            url = f"{base}/v2/models/{model}/infer"
            body = json.dumps(image_request(data, {flag: True})).encode()
            headers["Content-Type"] = "application/json"
        elif flag == "explain":  # TorchServe hands the handler the body and the headers, never the query string
            url, body = f"{base}/explanations/{model}", data
            headers["Content-Type"] = "application/octet-stream"
        else:
            url, body = f"{base}/predictions/{model}", data
            headers.update({"Content-Type": "application/octet-stream", flag: "1"})
        try:
            return requests.post(url, data=body, headers=headers, timeout=self.timeout)
        except requests.ConnectTimeout as exc:
            return Unreachable(f"model server did not accept the connection: {exc.__class__.__name__}")
        except requests.Timeout:
            return ServerError(f"model server timed out after {self.timeout[1]:.0f} s")
        except requests.ConnectionError as exc:
            return Unreachable(f"model server unreachable at {base}: {exc.__class__.__name__}")
        except requests.RequestException as exc:
            return ServerError(f"request to the model server failed: {exc}")

    def _answer(
        self, response: requests.Response
    ) -> tuple[dict[str, Any] | None, Refusal | ServerError | Unreachable | None]:
        """The contract's success body of an answer, or what the answer is instead (a refusal, an error, or
        a model server that is not taking this model's requests now: :func:`_unavailable`)."""
        body = _json_or_none(response)
        unavailable = _unavailable(response, body)
        if unavailable is not None:
            return None, unavailable
        if response.status_code == 200 and isinstance(body, dict):
            if self.protocol != "v2":
                return body, None
            result = result_body(body)
            if result is not None:
                return result, None
            return None, ServerError("the model server's v2 answer has no JSON output named result")
        if self.protocol == "v2":
            code = error_code(body)  # also where a v2 proxy (KServe) kept only the text, in its own HTTP 500
            refused = response.status_code >= 400
        else:
            code = body.get("code") if isinstance(body, dict) else None
            refused = 400 <= response.status_code < 500
        if refused and isinstance(body, dict) and code in REFUSAL_CODES:
            return None, Refusal(code=str(code), message=_refusal_message(body, str(code)))
        return None, ServerError(_describe_error(response, body))

    def analyze(self, model: str, data: bytes) -> Outcome:
        """Prediction and heatmap of one image, in one request."""
        start = time.perf_counter()
        response = self._post(model, data, "explain")
        if not isinstance(response, requests.Response):
            return response
        latency_ms = (time.perf_counter() - start) * 1000.0
        body, other = self._answer(response)
        if body is None or "probabilities" not in body:
            return other or ServerError("the model server's answer has no probabilities")
        png = _png_or_none(body.pop("overlay_png_base64", None))
        body.pop("grid", None)  # the overlay carries it; the grid is for other services
        if png is None:
            return ServerError("the model server's heatmap is not a valid base64 PNG")
        return Prediction(
            body=body, latency_ms=latency_ms, heatmap_png=png, explained_class=str(body.get("explained_class", ""))
        )

    def cells(self, model: str, data: bytes) -> CellOutcome:
        """Every white cell in one image, with the annotated image, in one request."""
        start = time.perf_counter()
        response = self._post(model, data, "annotate")
        if not isinstance(response, requests.Response):
            return response
        latency_ms = (time.perf_counter() - start) * 1000.0
        body, other = self._answer(response)
        if body is None or not isinstance(body.get("cells"), list):
            return other or ServerError("the model server's answer has no cells")
        encoded = body.pop("annotated_png", None)
        png = _png_or_none(encoded)
        if encoded is not None and png is None:
            return ServerError("the model server's annotated image is not a valid base64 PNG")
        return CellPrediction(body=body, latency_ms=latency_ms, annotated_png=png)

    def ping(self, models: Sequence[str] = ()) -> tuple[bool, str]:
        """(healthy, detail): TorchServe's ``/ping`` (which needs the inference key), or, with ``v2``, the
        protocol's ``/v2/health/ready`` of every base URL that serves one of ``models`` (default: the
        portal's), falling back to ``/ping`` where that is not found (TorchServe's own v2 endpoint). The
        URLs are asked at once, so that ``/readyz`` takes one health check's time (at most 2 s, twice with
        the fallback) however many predictors hang, within its probe's 5 s (docker/k8s/base/portal-web.yaml)."""
        if self.protocol != "v2":
            return self._ping_torchserve(self.base_url)
        wanted = list(models) or [*settings.PORTAL_MODELS, *filter(None, [settings.PORTAL_CELL_MODEL])]
        urls = list(dict.fromkeys(self.url_for(m) for m in wanted))
        with ThreadPoolExecutor(max_workers=len(urls)) as pool:
            results = list(pool.map(self._ping_v2, urls))
        return all(ok for ok, _ in results), "; ".join(detail for _, detail in results)

    def _ping_torchserve(self, base: str) -> tuple[bool, str]:
        ok, detail, _ = self._get_health(f"{base}/ping", lambda b: b.get("status") == "Healthy")
        return ok, detail

    def _ping_v2(self, base: str) -> tuple[bool, str]:
        ok, detail, status = self._get_health(f"{base}/v2/health/ready", lambda b: b.get("ready") is True)
        return self._ping_torchserve(base) if status == 404 else (ok, detail)

    def _get_health(self, url: str, healthy: Callable[[dict[str, Any]], bool]) -> tuple[bool, str, int | None]:
        headers = {"Authorization": f"Bearer {self.key}"} if self.key else {}
        try:
            response = requests.get(url, headers=headers, timeout=2)
        except requests.RequestException as exc:
            return False, f"unreachable at {url}: {exc.__class__.__name__}", None
        body = _json_or_none(response)
        ok = response.status_code == 200 and isinstance(body, dict) and healthy(body)
        status = body.get("status") if isinstance(body, dict) else None
        detail = f"HTTP {response.status_code}" + (f" {status}" if isinstance(status, str) else "") + f" from {url}"
        return ok, detail, response.status_code


#: what KServe's REST client appends to the error text it passes on
_PROXY_SUFFIX = re.compile(r", '\d{3} [^']*' for url '[^']*'$")


def _refusal_message(body: dict[str, Any], code: str) -> str:
    """A refusal's human message: the contract's ``message``, or a v2 error's text without the code
    (and without what a proxy put around it)."""
    if isinstance(body.get("message"), str):
        return str(body["message"])
    text = str(body.get("error", ""))
    return _PROXY_SUFFIX.sub("", text.split(f"{code}: ", 1)[-1])


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


#: HTTP statuses that say no model server takes the request now, rather than that one failed on it: a
#: proxy in front with nothing behind it (nginx, an ingress: 502, 504), or TorchServe with no worker for
#: the model (503: a worker restarting after a crash, or the model's queue full)
_UNAVAILABLE_STATUS = frozenset({502, 503, 504})
#: the text KServe's model server answers (HTTP 500) when the predictor behind it, TorchServe in the same
#: pod, refuses the connection (measured with kserve 0.21.0: ``ConnectError : All connection attempts
#: failed``); its own /v2/health/ready still says ready
_PREDICTOR_REFUSED = re.compile(r"^(?:ConnectError|ConnectTimeout) : ")


def _unavailable(response: requests.Response, body: Any) -> Unreachable | None:
    """The answer as :class:`Unreachable` when it says that nothing is taking the model's requests now:
    the analysis then waits for the model server (as when the connection is refused), instead of spending
    its few retries on an outage that lasts longer than their backoff (a TorchServe restart, a pod
    rescheduled)."""
    status = response.status_code
    if status in _UNAVAILABLE_STATUS:
        return Unreachable(f"model server unavailable: HTTP {status} from {response.url}")
    error = body.get("error") if isinstance(body, dict) else None
    if status == 500 and isinstance(error, str) and _PREDICTOR_REFUSED.match(error):
        return Unreachable(f"the predictor behind {response.url} refused the connection: {error.split(' : ')[0]}")
    return None


def _describe_error(response: requests.Response, body: Any) -> str:
    detail = ""
    if isinstance(body, dict):
        detail = str(body.get("message") or body.get("type") or body.get("code") or "")
    elif response.text:
        detail = response.text[:200]
    return f"model server answered HTTP {response.status_code}" + (f": {detail}" if detail else "")
