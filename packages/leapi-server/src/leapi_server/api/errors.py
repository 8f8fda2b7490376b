"""Refusals on the wire: the one place a domain outcome becomes an HTTP status code and the documented
``{"status": "REJECTED", "reason": "..."}`` body (also on 401, 403, 404 and framework errors, so that
clients have one error shape).

Status codes: 400 invalid request, 401 missing/wrong key, 402 monthly quota exhausted, 403 refused temp
URL, 404 unknown pipeline or file, 413 body too large, 422 Idempotency-Key reused with another body,
429 rate limit (with ``Retry-After``).

With ``--compat docs`` a REJECTED is answered as the docs show it: HTTP 200 and the body, no
``Retry-After``. Kept: 401 (a bad key), 403 (a refused temp URL: the real service's presigned S3 URLs
answer 403 themselves) and 404 (an unknown pipeline or path), which are routing answers rather than the
refusals the docs describe.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from leapi.constants import API_KEY_HEADER
from leapi.models import Rejection
from leapi_server.outcomes import (
    IdempotencyConflict,
    NotFound,
    QuotaExceeded,
    RateLimited,
    Refusal,
    Refused,
    Rejected,
    RejectionKind,
)

log = logging.getLogger("leapi_server")

RETRY_AFTER_HEADER = "Retry-After"
#: Status codes ``--compat docs`` keeps; every other REJECTED is answered with HTTP 200.
DOCS_ONLY_KEPT_STATUSES = frozenset({401, 403, 404})

_REJECTED_STATUS = {
    RejectionKind.INVALID_REQUEST: 400,
    RejectionKind.UNAUTHENTICATED: 401,
    RejectionKind.TEMP_URL_REFUSED: 403,
    RejectionKind.BODY_TOO_LARGE: 413,
}

#: What each status code means, for the OpenAPI document.
_DESCRIPTIONS = {
    400: "REJECTED: the request is invalid; `reason` names the field",
    401: "REJECTED: X-API-KEY missing or wrong",
    402: "REJECTED: monthly quota exhausted (no credit charged)",
    403: "REJECTED: temp URL tampered with or expired",
    404: "REJECTED: no such pipeline for this key",
    413: "REJECTED: request body too large",
    422: "REJECTED: Idempotency-Key reused with a different body",
    429: "REJECTED: `Too Many Requests. Rate limit exceeded.`",
}


def status_code_of(refusal: Refusal) -> int:
    """The HTTP status code of a refusal."""
    match refusal:
        case Rejected(kind=kind):
            return _REJECTED_STATUS[kind]
        case QuotaExceeded():
            return 402
        case NotFound():
            return 404
        case IdempotencyConflict():
            return 422
        case RateLimited():
            return 429
    raise AssertionError(f"unmapped refusal {refusal!r}")  # pragma: no cover - Refusal is a closed union


def _headers_of(refusal: Refusal, *, docs_only: bool) -> dict[str, str] | None:
    if isinstance(refusal, RateLimited) and not docs_only:
        return {RETRY_AFTER_HEADER: str(refusal.retry_after_s)}
    if isinstance(refusal, Rejected) and refusal.kind is RejectionKind.UNAUTHENTICATED:
        return {"WWW-Authenticate": API_KEY_HEADER}
    return None


def rejection(
    status_code: int, reason: str, headers: dict[str, str] | None = None, *, docs_only: bool = False
) -> JSONResponse:
    """The documented REJECTED body with ``status_code`` (200 under ``--compat docs``, see above)."""
    if docs_only and status_code < 500 and status_code not in DOCS_ONLY_KEPT_STATUSES:
        status_code = 200
    return JSONResponse(
        Rejection(reason=reason).model_dump(mode="json"), status_code=status_code, headers=headers
    )


def refusal_response(refusal: Refusal, *, docs_only: bool = False) -> JSONResponse:
    """The HTTP answer to a refusal.

    :param docs_only: answer as ``--compat docs`` does (HTTP 200, no ``Retry-After``).
    """
    return rejection(
        status_code_of(refusal),
        refusal.reason,
        _headers_of(refusal, docs_only=docs_only),
        docs_only=docs_only,
    )


def _docs_only(request: Request) -> bool:
    return bool(request.app.state.runtime.config.docs_only)


def rejection_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The ``responses`` of a route's OpenAPI operation for these refusal codes."""
    out: dict[int | str, dict[str, Any]] = {}
    for code in codes:
        out[code] = {"model": Rejection, "description": _DESCRIPTIONS[code]}
    if 429 in out:
        out[429]["headers"] = {
            RETRY_AFTER_HEADER: {
                "description": "seconds until a request will be accepted",
                "schema": {"type": "integer"},
            }
        }
    return out


def install_error_handlers(app: FastAPI) -> None:
    """Answer refusals, framework errors (404 path, 405 method, validation) and crashes as REJECTED."""

    @app.exception_handler(Refused)
    async def _refused(request: Request, exc: Refused) -> JSONResponse:
        return refusal_response(exc.refusal, docs_only=_docs_only(request))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return rejection(
            exc.status_code, str(exc.detail), getattr(exc, "headers", None), docs_only=_docs_only(request)
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return rejection(500, "internal server error; the request may be retried")

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        reason = f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}"
        return rejection(400, reason, docs_only=_docs_only(request))
