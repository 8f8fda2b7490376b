"""The webhook receiver: a small FastAPI app that the provider's plugin mounts on the Airflow api-server.

``POST <prefix>/v1/<channel>?token=<token>`` with LEAPI's webhook body. In order:

1. the channel must have a channel's form (else 404) and the token must be its HMAC (else 403; constant
   time);
2. when the ``leapi_webhooks`` connection has a ``signing_secret`` (a ``leapi-server``), the Standard
   Webhooks signature must match and its timestamp be within ``signature_tolerance`` (else 401: forged or
   replayed);
3. the body must name a pipeline id (else 422). The LEAPI docs promise "a POST and pipeline id";
   ``leapi-server`` sends ``{"id", "status", "pipeline"}``. Accepted: JSON ``id``, ``pipeline_id`` or
   ``pipeline.id``, or the same names form-encoded;
4. the id is queued on the channel once (:class:`~.hints.HintPublisher`): 202 ``{"queued": true}``, or
   ``{"queued": false}`` for a duplicate or a pipeline still ``PROCESSING``. Redis down: 503, and LEAPI
   retries (3, 6, 10 minutes later); the waiting trigger polls meanwhile.

Nothing here reads LEAPI or touches Airflow's database: a request costs one Redis round trip, and a
webhook can only make a status read happen sooner.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from leapi.models import PipelineStatus
from leapi.webhooks import WebhookVerificationError, verify_webhook
from leapi_provider.webhooks.hints import HintPublisher
from leapi_provider.webhooks.hook import DEFAULT_CONN_ID, LeapiWebhooksHook, WebhookSettings
from leapi_provider.webhooks.tokens import CHANNEL_PATTERN, ROUTE_VERSION, TOKEN_PARAM, token_matches

log = logging.getLogger(__name__)

#: Webhook bodies are small (leapi-server's carries the pipeline object, a few KB per image).
MAX_BODY_BYTES = 1024 * 1024
#: How long the receiver keeps the connection's settings before reading them again (a rotated secret or a
#: moved Redis is picked up within this time, without a request reading the database each time).
SETTINGS_TTL_S = 30.0


class BadWebhookBody(ValueError):
    """The body names no pipeline id (or names two)."""


@dataclass(frozen=True)
class WebhookNotice:
    """What the receiver needs from a webhook body."""

    pipeline_id: int
    status: str | None


def _as_id(value: Any) -> int | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = int(str(value).strip())
    except ValueError:
        return None
    return number if number > 0 else None


def parse_webhook_body(body: bytes, content_type: str = "application/json") -> WebhookNotice:
    """The pipeline id (and status, if any) of a webhook body.

    :raises BadWebhookBody: no id, or ``id`` and ``pipeline.id`` disagree.
    """
    data: Mapping[str, Any]
    if "application/x-www-form-urlencoded" in content_type.lower():
        data = {key: values[0] for key, values in parse_qs(body.decode(errors="replace")).items()}
    else:
        try:
            loaded = json.loads(body or b"null")
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise BadWebhookBody(f"the body is not JSON: {exc}") from None
        if not isinstance(loaded, dict):
            raise BadWebhookBody("the body is not a JSON object")
        data = loaded
    nested = data.get("pipeline")
    pipeline: Mapping[str, Any] = nested if isinstance(nested, dict) else {}
    candidates = {_as_id(data.get("id")), _as_id(data.get("pipeline_id")), _as_id(pipeline.get("id"))}
    candidates.discard(None)
    if not candidates:
        raise BadWebhookBody("no pipeline id in the body (expected 'id', 'pipeline_id' or 'pipeline.id')")
    if len(candidates) > 1:
        raise BadWebhookBody(f"the body names several pipeline ids: {sorted(candidates)}")  # type: ignore[type-var]
    status = data.get("status") or pipeline.get("status")
    (pipeline_id,) = candidates
    assert pipeline_id is not None
    return WebhookNotice(pipeline_id=pipeline_id, status=str(status).upper() if status else None)


class _ReceiverState:
    """The connection's settings (re-read every :data:`SETTINGS_TTL_S`) and the Redis publisher."""

    def __init__(self, load_settings: Callable[[], WebhookSettings]) -> None:
        self._load = load_settings
        self._lock = asyncio.Lock()
        self._settings: WebhookSettings | None = None
        self._loaded_at = 0.0
        self.publisher: HintPublisher | None = None

    async def settings(self) -> WebhookSettings:
        if self._settings is not None and time.monotonic() - self._loaded_at < SETTINGS_TTL_S:
            return self._settings
        async with self._lock:
            if self._settings is None or time.monotonic() - self._loaded_at >= SETTINGS_TTL_S:
                settings = await asyncio.to_thread(self._load)
                if self.publisher is None or self.publisher.location != settings.redis:
                    if self.publisher is not None:
                        await self.publisher.aclose()
                    self.publisher = HintPublisher(location=settings.redis, ttl_s=settings.hint_ttl_s)
                self.publisher.ttl_s = settings.hint_ttl_s
                self._settings, self._loaded_at = settings, time.monotonic()
        return self._settings

    async def aclose(self) -> None:
        if self.publisher is not None:
            await self.publisher.aclose()


def _problem(status_code: int, detail: str) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status_code)


def create_app(
    *, conn_id: str | None = None, load_settings: Callable[[], WebhookSettings] | None = None
) -> FastAPI:
    """The receiver app.

    :param conn_id: the ``leapi_webhooks`` connection; default ``[leapi] webhooks_conn_id`` of the Airflow
        configuration (``leapi_webhooks_default``), read at the first request.
    :param load_settings: how to read the settings (blocking; called in a thread), instead of the connection.
    """

    def from_connection() -> WebhookSettings:
        chosen = conn_id
        if chosen is None:
            from airflow.sdk import conf

            chosen = conf.get("leapi", "webhooks_conn_id", fallback=DEFAULT_CONN_ID)
        return LeapiWebhooksHook(chosen).get_settings()

    state = _ReceiverState(load_settings or from_connection)
    app = FastAPI(
        title="LEAPI webhook receiver",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    # (A mounted sub-app gets no lifespan events: the publisher's connections close with the process.)
    app.state.receiver = state

    @app.post(f"/{ROUTE_VERSION}/{{channel}}", status_code=202)
    async def receive_webhook(channel: str, request: Request) -> JSONResponse:
        if not CHANNEL_PATTERN.fullmatch(channel):
            return _problem(404, "unknown webhook channel")
        try:
            settings = await state.settings()
        except Exception as exc:  # noqa: BLE001 - misconfigured: LEAPI retries, the waits poll meanwhile
            log.error("LEAPI webhook receiver is not configured: %s", exc)
            return _problem(503, "the webhook receiver is not configured")
        if not token_matches(settings.token_secret, channel, request.query_params.get(TOKEN_PARAM, "")):
            return _problem(403, "bad or missing token")
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
            return _problem(413, f"body larger than {MAX_BODY_BYTES} bytes")
        body = await request.body()
        if len(body) > MAX_BODY_BYTES:
            return _problem(413, f"body larger than {MAX_BODY_BYTES} bytes")
        if settings.signing_secret:
            try:
                verify_webhook(
                    settings.signing_secret,
                    request.headers,
                    body,
                    tolerance_s=settings.signature_tolerance_s,
                )
            except WebhookVerificationError as exc:
                return _problem(401, f"signature check failed: {exc}")
        try:
            notice = parse_webhook_body(body, request.headers.get("content-type", ""))
        except BadWebhookBody as exc:
            return _problem(422, str(exc))
        if notice.status == PipelineStatus.PROCESSING.value:
            return JSONResponse({"queued": False, "pipeline_id": notice.pipeline_id, "reason": "not finished"},
                                status_code=202)  # fmt: skip
        assert state.publisher is not None
        try:
            queued = await state.publisher.publish(channel, notice.pipeline_id)
        except Exception as exc:  # noqa: BLE001 - Redis down: refuse, so that LEAPI retries
            log.warning("LEAPI webhook for pipeline %s not queued: %s", notice.pipeline_id, exc)
            return _problem(503, "hint store unavailable; retry later")
        return JSONResponse({"queued": queued, "pipeline_id": notice.pipeline_id}, status_code=202)

    return app
