"""The HTTP surface of ``leapi-server`` (FastAPI). Routes are thin: authenticate, parse, call the runtime.

Every refusal has the documented body ``{"status": "REJECTED", "reason": "..."}``; HTTP codes:
200 ACCEPTED, 400 invalid request, 401 missing/wrong key, 402 monthly quota exhausted, 403 refused temp
URL, 404 unknown pipeline, 413 body too large, 422 Idempotency-Key reused with another body, 429 rate
limit (with ``Retry-After``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import logging.config
import mimetypes
import re
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import uvicorn
from fastapi import Depends, FastAPI, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse, JSONResponse
from fastapi.security import APIKeyHeader
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from leapi.constants import (
    API_KEY_HEADER,
    HEALTH_PATH,
    IDEMPOTENCY_KEY_HEADER,
    IDEMPOTENCY_SUPPORT_HEADER,
    RATE_LIMIT_REASON,
)
from leapi.models import (
    PipelineEnvelope,
    PipelineRequest,
    Rejection,
    SubmitResponse,
    Usage,
    validation_reason,
)
from leapi_server import __version__
from leapi_server.config import ServerConfig
from leapi_server.runtime import DataDirInUseError, Runtime, lock_data_dir, rejected
from leapi_server.tempstore import TempUrlError

log = logging.getLogger("leapi_server")

_IDEMPOTENCY_KEY_RE = re.compile(r"^[\x21-\x7e]{1,255}$")
_PIPELINE_ID_RE = re.compile(r"^[0-9]{1,18}$")


class ApiError(Exception):
    """Answered as ``{"status": "REJECTED", "reason": ...}`` with ``status_code``."""

    def __init__(self, status_code: int, reason: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(reason)
        self.status_code = status_code
        self.reason = reason
        self.headers = headers or {}


def _rejection(status_code: int, reason: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(rejected(reason), status_code=status_code, headers=headers)


class IdempotencySupportHeader:
    """Pure ASGI middleware: every response says the Idempotency-Key extension is supported."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_header(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [
                    *message.get("headers", []),
                    (IDEMPOTENCY_SUPPORT_HEADER.lower().encode(), b"supported"),
                ]
            await send(message)

        await self.app(scope, receive, send_with_header)


def _rejection_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    descriptions = {
        400: "REJECTED: the request is invalid; `reason` names the field",
        401: "REJECTED: X-API-KEY missing or wrong",
        402: "REJECTED: monthly quota exhausted (no credit charged)",
        403: "REJECTED: temp URL tampered with or expired",
        404: "REJECTED: no such pipeline for this key",
        413: "REJECTED: request body too large",
        422: "REJECTED: Idempotency-Key reused with a different body",
        429: "REJECTED: `Too Many Requests. Rate limit exceeded.`",
    }
    out: dict[int | str, dict[str, Any]] = {}
    for code in codes:
        out[code] = {"model": Rejection, "description": descriptions[code]}
    if 429 in out:
        out[429]["headers"] = {
            "Retry-After": {
                "description": "seconds until a request will be accepted",
                "schema": {"type": "integer"},
            }
        }
    return out


def create_app(config: ServerConfig) -> FastAPI:
    runtime = Runtime(config)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await runtime.start()
        log.info(
            "leapi-server ready on %s (data dir %s, %d worker process(es), %d API key(s), rate limit %s/min, "
            "monthly quota %s, private sources %s)",
            config.listen_url,
            config.data_dir,
            config.workers,
            len(config.api_keys),
            config.rate_limit_per_minute or "unlimited",
            config.monthly_quota or "unlimited",
            "ALLOWED" if config.allow_private_sources else "refused",
        )
        try:
            yield
        finally:
            await runtime.stop()

    app = FastAPI(
        title="leapi-server",
        version=__version__,
        summary="A LEAPI-compatible image enhancement server",
        lifespan=lifespan,
        redoc_url=None,
    )
    app.state.runtime = runtime
    app.add_middleware(IdempotencySupportHeader)

    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return _rejection(exc.status_code, exc.reason, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _rejection(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return _rejection(500, "internal server error; the request may be retried")

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        return _rejection(400, f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}")

    api_key_scheme = APIKeyHeader(
        name=API_KEY_HEADER, auto_error=False, description="Your API key (the docs: `X-API-KEY: 1234567890`)."
    )

    async def require_owner(key: str | None = Security(api_key_scheme)) -> str:
        owner = runtime.keys.owner_of(key)
        if owner is None:
            reason = f"missing {API_KEY_HEADER} header" if not key else "invalid API key"
            raise ApiError(401, reason, {"WWW-Authenticate": API_KEY_HEADER})
        return owner

    submit_extra = {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/PipelineRequest"}}},
        },
        "parameters": [
            {
                "name": IDEMPOTENCY_KEY_HEADER,
                "in": "header",
                "required": False,
                "description": "Extension: replays of the same key (same API key, 24 h) return the original "
                "ACCEPTED answer without a new pipeline or charge; with a different body they are REJECTED.",
                "schema": {"type": "string", "pattern": _IDEMPOTENCY_KEY_RE.pattern},
            }
        ],
    }

    async def submit_pipeline(request: Request, owner: str = Depends(require_owner)) -> JSONResponse:
        retry_after = runtime.limiter.hit(owner)
        if retry_after is not None:
            return _rejection(429, RATE_LIMIT_REASON, {"Retry-After": str(retry_after)})
        body = await _read_limited(request, config.max_request_bytes)
        try:
            payload = json.loads(body)
        except RecursionError:
            # A body of nested brackets exhausts the parser's stack: hostile, not a server fault.
            raise ApiError(400, "body: malformed JSON (nested too deeply)") from None
        except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, integers over 4300 digits
            raise ApiError(400, f"body: malformed JSON ({exc})") from None
        if not isinstance(payload, dict):
            raise ApiError(400, "body: must be a JSON object with source, operations and sink")
        try:
            pipeline_request = PipelineRequest.model_validate(payload)
        except ValidationError as exc:
            raise ApiError(400, validation_reason(exc)) from None
        idempotency_key = request.headers.get(IDEMPOTENCY_KEY_HEADER)
        if idempotency_key is not None and not _IDEMPOTENCY_KEY_RE.match(idempotency_key):
            raise ApiError(400, f"{IDEMPOTENCY_KEY_HEADER}: must be 1 to 255 visible ASCII characters")
        outcome = await asyncio.to_thread(
            runtime.submit, owner=owner, request=pipeline_request, idempotency_key=idempotency_key
        )
        if outcome.status_code == 200:
            runtime.dispatcher.wake()
        return JSONResponse(outcome.body, status_code=outcome.status_code, headers=outcome.headers)

    # The docs write both /v1/pipeline and /v1/pipeline/ (base URL); a POST must not depend on redirects.
    for path, in_schema in (("/v1/pipeline", True), ("/v1/pipeline/", False)):
        app.add_api_route(
            path,
            submit_pipeline,
            methods=["POST"],
            response_model=SubmitResponse,
            responses=_rejection_responses(400, 401, 402, 413, 422, 429),
            openapi_extra=submit_extra,
            include_in_schema=in_schema,
            summary="Submit a pipeline (one credit per source URL)",
            operation_id="submit_pipeline" if in_schema else "submit_pipeline_slash",
        )

    @app.get(
        "/v1/pipeline/{pipeline_id}",
        response_model=PipelineEnvelope,
        responses=_rejection_responses(401, 404),
        summary="Pipeline status and results",
    )
    async def get_pipeline(
        pipeline_id: str, request: Request, owner: str = Depends(require_owner)
    ) -> JSONResponse:
        number = _pipeline_number(pipeline_id)
        pipeline = await asyncio.to_thread(
            runtime.pipeline, owner=owner, pipeline_id=number, base_url=str(request.base_url)
        )
        if pipeline is None:
            raise ApiError(404, f"pipeline {pipeline_id} not found")
        return JSONResponse({"pipeline": pipeline})

    @app.get(
        "/v1/pipeline/{pipeline_id}/webhooks",
        responses=_rejection_responses(401, 404),
        summary="Extension: webhook deliveries of a pipeline and each attempt",
    )
    async def get_webhook_deliveries(pipeline_id: str, owner: str = Depends(require_owner)) -> JSONResponse:
        number = _pipeline_number(pipeline_id)
        deliveries = await asyncio.to_thread(runtime.webhook_deliveries, owner=owner, pipeline_id=number)
        if deliveries is None:
            raise ApiError(404, f"pipeline {pipeline_id} not found")
        return JSONResponse({"deliveries": deliveries})

    async def get_usage(owner: str = Depends(require_owner)) -> JSONResponse:
        return JSONResponse(await asyncio.to_thread(runtime.usage, owner=owner))

    for path, in_schema in (("/v1/me/usage/", True), ("/v1/me/usage", False)):
        app.add_api_route(
            path,
            get_usage,
            methods=["GET"],
            response_model=Usage,
            responses=_rejection_responses(401),
            include_in_schema=in_schema,
            summary="Credits used this month, quota and rate limit",
            operation_id="get_usage" if in_schema else "get_usage_no_slash",
        )

    @app.api_route(
        "/v1/tmp/{key:path}",
        methods=["GET", "HEAD"],
        responses={
            200: {"description": "the output image", "content": {"image/jpeg": {}, "image/png": {}}},
            **_rejection_responses(403, 404),
        },
        summary="Download an output through its signed tmp_url (no API key: the signature is the credential)",
    )
    async def get_temp_file(
        key: str, expires: str | None = None, signature: str | None = None
    ) -> FileResponse:
        try:
            path = runtime.temp_store.resolve(key, expires, signature)
        except TempUrlError as exc:
            raise ApiError(403, str(exc)) from None
        if not path.is_file():
            raise ApiError(404, "the temporary file no longer exists")
        media_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        max_age = max(0, int(expires or 0) - int(time.time()))
        return FileResponse(
            path,
            media_type=media_type,
            filename=path.name,
            headers={"Cache-Control": f"private, max-age={max_age}"},
        )

    @app.get(HEALTH_PATH, summary="Extension: liveness (no API key)")
    async def healthz() -> dict[str, Any]:
        return {
            "status": "ok",
            "busy_tasks": runtime.dispatcher.busy,
            "extensions": ["idempotency-key", "signed-webhooks", "result-error", "webhook-deliveries"],
        }

    def custom_openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title,
            version=app.version,
            summary=app.summary,
            description=(
                "LEAPI-compatible: POST /v1/pipeline, GET /v1/pipeline/{id}, GET /v1/me/usage/. Every refusal "
                'is `{"status": "REJECTED", "reason": "..."}`. Timestamps are UTC, ISO 8601 without offset, '
                "as in the LEAPI docs."
            ),
            routes=app.routes,
        )
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        request_schema = PipelineRequest.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(request_schema.pop("$defs", {}))
        components["PipelineRequest"] = request_schema
        _describe_server_constraints(components, config)
        _drop_datetime_format(schema)
        app.openapi_schema = schema
        return schema

    app.openapi = custom_openapi  # type: ignore[method-assign]
    return app


def _pipeline_number(pipeline_id: str) -> int:
    if not _PIPELINE_ID_RE.match(pipeline_id):  # not str.isdigit: that accepts "4²", which int() refuses
        raise ApiError(404, f"pipeline {pipeline_id} not found")
    return int(pipeline_id)


async def _read_limited(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"body: request body is larger than {limit} bytes")
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"body: request body is larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


#: What this server accepts as a source or webhook URL (``check_http_url``), as a JSON-schema pattern.
HTTP_URL_PATTERN = r"^[Hh][Tt][Tt][Pp][Ss]?://[A-Za-z0-9._~-]+(:[1-9][0-9]{0,3})?([/?#][\x21-\x7e]*)?$"


def _describe_server_constraints(components: dict[str, Any], config: ServerConfig) -> None:
    """The wire model documents the LEAPI contract; the schema also shows what this server enforces:
    ``url`` as a string or a list (the docs use both) of http(s) URLs, at most ``--max-urls-per-pipeline``;
    ``op`` required; ``temp_store`` true."""
    url = {"type": "string", "minLength": 1, "pattern": HTTP_URL_PATTERN}
    components["HttpSource"]["properties"]["url"] = {
        "anyOf": [
            url,
            {"type": "array", "items": url, "minItems": 1, "maxItems": config.max_urls_per_pipeline},
        ],
        "title": "Url",
        "description": "one source image URL or a list of them (one credit each)",
    }
    # ``op`` has a default in Python (``MarketplacePreset(width=...)``) but is the discriminator on the wire.
    for preset in ("MarketplacePreset", "RealEstatePreset", "PrintPreset"):
        required = components[preset].setdefault("required", [])
        if "op" not in required:
            required.insert(0, "op")
    components["Sink"]["properties"]["temp_store"] = {
        "type": "boolean",
        "const": True,
        "default": True,
        "title": "Temp Store",
        "description": "temp_store is the only sink of this server: must be true",
    }
    components["PipelineRequest"]["properties"]["notify_url"] = {
        "anyOf": [{"type": "string", "pattern": HTTP_URL_PATTERN}, {"type": "null"}],
        "default": None,
        "title": "Notify Url",
    }


def _drop_datetime_format(node: Any) -> None:
    """Timestamps are emitted as the LEAPI docs show them (no UTC offset), which is not RFC 3339
    ``date-time``; describe them honestly instead."""
    if isinstance(node, dict):
        if node.get("format") == "date-time":
            node.pop("format")
            node.setdefault("description", "ISO 8601 timestamp, UTC, without offset")
        for value in node.values():
            _drop_datetime_format(value)
    elif isinstance(node, list):
        for value in node:
            _drop_datetime_format(value)


# -- process entry point ---------------------------------------------------------------------------------

_SECRET_QUERY = re.compile(r"(signature=)[^&\s\"]+", re.IGNORECASE)


class RedactSecrets(logging.Filter):
    """Access logs print request paths; a tmp_url's signature is a credential, so it is masked.
    (API keys travel in a header, which no log line prints.)"""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                _SECRET_QUERY.sub(r"\1REDACTED", a) if isinstance(a, str) else a for a in record.args
            )
        return True


def log_config(level: str) -> dict[str, Any]:
    fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"redact": {"()": RedactSecrets}},
        "formatters": {"plain": {"format": fmt}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "plain",
                "stream": "ext://sys.stderr",
                "filters": ["redact"],
            }
        },
        "loggers": {
            "uvicorn": {"handlers": ["stderr"], "level": level.upper(), "propagate": False},
            "uvicorn.access": {"handlers": ["stderr"], "level": level.upper(), "propagate": False},
            "leapi_server": {"handlers": ["stderr"], "level": level.upper(), "propagate": False},
        },
    }


def serve(config: ServerConfig, *, log_level: str = "info") -> None:
    """Run the server until SIGINT/SIGTERM."""
    logging.config.dictConfig(log_config(log_level))
    try:
        lock = lock_data_dir(config)
    except DataDirInUseError as exc:
        log.error("%s", exc)
        sys.exit(2)
    try:
        app = create_app(config)
        server = uvicorn.Server(
            uvicorn.Config(
                app,
                host=config.host,
                port=config.port,
                log_config=log_config(log_level),
                log_level=log_level,
                backlog=2048,
                timeout_graceful_shutdown=5,
                server_header=False,
            )
        )
        server.run()
    finally:
        lock.close()
