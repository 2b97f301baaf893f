"""Error answers for the whole site: JSON under /api/, a short page elsewhere; never a traceback.

- 404 (``handler404``): under /api/, ``{"detail": "Not found.", "code": "not_found"}``; elsewhere the
  404 page;
- 400 (``handler400``): Django refused the request before any view (too many files in one upload,
  too many form fields, a malformed body); the API gets ``{"detail": ..., "code": ...}``. Too many
  files on the upload page brings the upload form back with the error (a form error, not a new page).
- 500 (``handler500``): when the database is unreachable (a restart, a network cut) the answer is
  **503 with Retry-After**, because the request can simply be sent again once it is back; nothing
  was accepted. Any other unexpected error stays a 500 and is logged with its traceback.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from django.core.exceptions import RequestDataTooBig, TooManyFieldsSent, TooManyFilesSent
from django.db import DatabaseError, InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse, JsonResponse

__all__ = [
    "audit_access_denied",
    "bad_request",
    "error_body",
    "page_not_found",
    "permission_denied",
    "server_error",
    "DATABASE_RETRY_AFTER_S",
]

log = logging.getLogger("portal.errors")
DATABASE_RETRY_AFTER_S = 10


def error_body(detail: str, code: str) -> dict[str, str]:
    """The API's error answer (portal.api.schema's ``Error``): a message for people, a stable code."""
    return {"detail": detail, "code": code}


def _wants_json(request: HttpRequest) -> bool:
    return request.path_info.startswith("/api/") or "application/json" in request.headers.get("Accept", "")


def _answer(request: HttpRequest, status: int, code: str, detail: str) -> HttpResponse:
    if _wants_json(request):
        return JsonResponse(error_body(detail, code), status=status)
    if status == 400:  # the styled page; never for 5xx, whose cause (the database) may break rendering
        from django.shortcuts import render

        return render(request, "400.html", {"detail": detail}, status=400)
    from django.templatetags.static import static  # no database, no template context: safe when the database is down

    title = {400: "Bad request", 500: "Server error", 503: "Temporarily unavailable"}.get(status, "Error")
    html = (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
        f'<link rel="stylesheet" href="{static("portal/portal.css")}"></head>'
        '<body><header class="top"><a class="brand" href="/">Leukemia smear portal</a></header>'
        f'<main><h1>{title}</h1><p class="error banner">{detail}</p>'
        '<p><a href="/">Back to the portal</a></p></main></body></html>'
    )
    return HttpResponse(html, status=status, content_type="text/html; charset=utf-8")


def bad_request(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    from django.conf import settings

    if isinstance(exception, TooManyFilesSent):
        if not _wants_json(request) and _is_upload_page(request):
            from portal.analyses.views import upload_too_many_files

            return upload_too_many_files(request)  # the upload form with the error, not a separate page
        detail = f"Too many files in one upload: at most {settings.PORTAL_MAX_FILES_PER_UPLOAD}."
        return _answer(request, 400, "too_many_files", detail)
    if isinstance(exception, TooManyFieldsSent):
        return _answer(request, 400, "too_many_fields", "Too many form fields in one request.")
    if isinstance(exception, RequestDataTooBig):
        return _answer(request, 400, "request_too_large", "The request body is larger than allowed.")
    return _answer(request, 400, "bad_request", "The request could not be understood.")


def _is_upload_page(request: HttpRequest) -> bool:
    """The upload page, for a user the page itself would serve: Django refused the request before the
    middleware's view checks (login, second factor) ran, so they are repeated here."""
    from django.urls import reverse

    from portal.accounts.second_factor import needs_second_factor

    user: Any = getattr(request, "user", None)
    if request.path_info != reverse("analyses:upload") or user is None or not user.is_authenticated:
        return False
    if not (user.has_perm("analyses.add_image") and user.has_perm("analyses.add_analysis")):
        return False
    verified = getattr(user, "is_verified", lambda: False)()
    return bool(verified or not needs_second_factor(user))


def audit_access_denied(request: Any, reason: str) -> None:
    """An authenticated user's refused attempt (web page or API) leaves an audit row: who, what, where."""
    if not request.user.is_authenticated:
        return
    from portal.actions.events import log_event

    log_event(
        "access.denied",
        actor=request.user,
        request=request,
        object_type="url",
        object_id=request.path[:64],
        data={"method": request.method, "path": request.path[:300], "reason": reason[:300]},
    )


def permission_denied(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """The styled 403 page, after the audit row."""
    from django.shortcuts import render

    audit_access_denied(request, str(exception or ""))
    return render(request, "403.html", status=403)


def page_not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """Under /api/ (a URL no API route matches) the API's JSON error; elsewhere Django's 404 page."""
    if request.path_info.startswith("/api/"):
        return JsonResponse(error_body("Not found.", "not_found"), status=404)
    from django.views.defaults import page_not_found as django_page_not_found

    return django_page_not_found(request, exception)  # type: ignore[arg-type]


def server_error(request: HttpRequest) -> HttpResponse:
    exc = sys.exc_info()[1]
    if isinstance(exc, OperationalError | InterfaceError) or (
        isinstance(exc, DatabaseError) and "gone away" in str(exc).lower()
    ):
        log.warning("database unavailable: %s %s: %s", request.method, request.path, exc)
        response = _answer(
            request,
            503,
            "database_unavailable",
            "The database is not reachable right now; nothing was saved. Please try again in a moment.",
        )
        response["Retry-After"] = str(DATABASE_RETRY_AFTER_S)
        return response
    return _answer(request, 500, "server_error", "An unexpected error happened; it has been logged.")
