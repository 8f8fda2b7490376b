"""Hook for the Let's Enhance image API (LEAPI): transport, retries, rate limiting and idempotent submits.

The hook owns everything about talking to the API; operators, sensors and triggers stay thin.

Retry rules (also in ``docs/provider.md``, "Retries and idempotency"):

* Reads (``GET`` of a pipeline, of the usage) are retried on connection errors, timeouts, dropped
  connections, 5xx, 429 and REJECTED "Too Many Requests", with exponential backoff and jitter, honouring
  ``Retry-After`` / ``RateLimit-Reset``.
* A submit (``POST /v1/pipeline``) is retried freely only when the API provably did not take it: the
  connection was never established (connect error, connect or pool timeout), or the API answered
  REJECTED rate limit / 429 (the docs: rejected requests cost no credit).
* Any other submit failure (read timeout, dropped connection, 5xx after the body was sent) is ambiguous:
  the pipeline may exist. It is retried only when the server supports idempotency: every submit carries
  an ``Idempotency-Key`` header, and ``leapi-server`` advertises, with ``X-Leapi-Idempotency: supported``
  on its answers, that a repeated key returns the first answer instead of creating a second pipeline.
  Without that (the public API does not document it) the hook raises
  :class:`~leapi_provider.exceptions.LeapiSubmitUncertainError` instead of risking a second charge.
* A REJECTED for any other reason raises :class:`~leapi_provider.exceptions.LeapiRejectedError`.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import hashlib
import json
import logging
import random
import re
import ssl
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import IO, Any, ClassVar, Self
from urllib.parse import urlsplit, urlunsplit

import httpx
from airflow.sdk import BaseHook

from leapi.constants import (
    API_KEY_HEADER,
    DEFAULT_BASE_URL,
    IDEMPOTENCY_KEY_HEADER,
    IDEMPOTENCY_SUPPORT_HEADER,
    PIPELINE_PATH,
    USAGE_PATH,
)
from leapi.models import Pipeline, PipelineEnvelope, PipelineRequest, SubmitResponse, SubmitStatus, Usage
from leapi_provider.exceptions import (
    LeapiAuthError,
    LeapiError,
    LeapiHTTPError,
    LeapiNotFoundError,
    LeapiRejectedError,
    LeapiSubmitUncertainError,
)
from leapi_provider.get_provider_info import LEAPI_UI_FIELD_BEHAVIOUR, PACKAGE_VERSION

DEFAULT_TIMEOUT_S = 30.0
DEFAULT_MAX_RETRIES = 6
DEFAULT_BACKOFF_BASE_S = 1.0
DEFAULT_BACKOFF_MAX_S = 60.0
#: A server asking to wait longer than this is waited for this long (then asked again).
MAX_RETRY_AFTER_S = 300.0
DOWNLOAD_CHUNK_BYTES = 1024 * 1024
USER_AGENT = f"airflow-provider-leapi/{PACKAGE_VERSION}"

#: Transport errors raised before the request could reach the server: always safe to retry.
_NOT_SENT_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
#: Transport errors worth retrying at all (others, e.g. an unsupported scheme, are bugs).
_TRANSIENT_ERRORS = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)


class IdempotencyMode(str, enum.Enum):
    """Connection extra ``idempotency``: when may an ambiguous submit failure be retried.

    * ``auto``: when the server advertised support (``X-Leapi-Idempotency: supported``).
    * ``always``: always (you know your server dedupes on ``Idempotency-Key``).
    * ``never``: never; no ``Idempotency-Key`` header is sent either.
    """

    AUTO = "auto"
    ALWAYS = "always"
    NEVER = "never"


# --------------------------------------------------------------------------------------------------
# Redaction: the API key never reaches a log; signed result URLs lose their query string.
# --------------------------------------------------------------------------------------------------


@functools.cache
def shared_tls_context() -> ssl.SSLContext:
    """One TLS context for every client this process builds.

    httpx builds a fresh context (loading the CA bundle, ~50 ms of CPU) per client; a triggerer running
    hundreds of triggers would spend that on its event loop for each one.
    """
    return httpx.create_ssl_context()


def redact_url(url: str | httpx.URL) -> str:
    """``url`` without its query string and fragment (signed result URLs carry credentials there)."""
    text = str(url)
    parts = urlsplit(text)
    if not parts.query and not parts.fragment:
        return text
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "<redacted>" if parts.query else "", ""))


_URL_WITH_QUERY = re.compile(r"https?://[^\s\"'<>]+\?[^\s\"'<>]*")


def redact_text(text: str) -> str:
    """``text`` with the query string of every URL in it redacted."""
    return _URL_WITH_QUERY.sub(lambda m: redact_url(m.group(0)), text)


class RedactSignedUrlsFilter(logging.Filter):
    """Redacts URL query strings in httpx's own request log lines (``HTTP Request: GET <url> ...``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and record.args:
            record.args = tuple(
                redact_url(arg)
                if isinstance(arg, httpx.URL) or (isinstance(arg, str) and "?" in arg)
                else arg
                for arg in record.args
            )
        elif isinstance(record.msg, str) and "?" in record.msg:
            record.msg = redact_text(record.msg)
        return True


def _install_httpx_log_filter() -> None:
    for name in ("httpx", "httpcore"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactSignedUrlsFilter) for f in logger.filters):
            logger.addFilter(RedactSignedUrlsFilter())


_install_httpx_log_filter()


def _mask_secret(secret: str) -> None:
    """Register the API key with Airflow's secrets masker (task and supervisor logs)."""
    try:
        from airflow.sdk.log import mask_secret

        mask_secret(secret)
    except Exception:  # noqa: BLE001 - masking is best effort outside a task/triggerer
        logging.getLogger(__name__).debug("could not register the API key with the secrets masker")


async def _amask_secret(secret: str) -> None:
    """:func:`_mask_secret` for the event loop: a sync supervisor call there could deadlock the triggerer."""
    try:
        from airflow.sdk.log import amask_secret

        await amask_secret(secret)
    except Exception:  # noqa: BLE001 - masking is best effort
        logging.getLogger(__name__).debug("could not register the API key with the secrets masker")


# --------------------------------------------------------------------------------------------------
# Idempotency keys
# --------------------------------------------------------------------------------------------------


def request_fingerprint(request: PipelineRequest) -> str:
    """A stable hash of what a request asks for (its documented wire form, keys sorted)."""
    canonical = json.dumps(request.to_wire(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def derive_idempotency_key(request: PipelineRequest, *scope: object) -> str:
    """A deterministic ``Idempotency-Key`` for ``request`` submitted on behalf of ``scope``.

    Operators pass the task instance identity (dag, task, run, map index: not the try number), so that a
    retried task sends the same key and gets its first pipeline back instead of a second one.
    """
    material = "\x1f".join([*(str(part) for part in scope), request_fingerprint(request)])
    return "leapi-" + hashlib.sha256(material.encode()).hexdigest()[:40]


# --------------------------------------------------------------------------------------------------
# Client-side rate limiter
# --------------------------------------------------------------------------------------------------


class SlidingWindowRateLimiter:
    """At most ``per_minute`` requests in any 60 s window, shared by the sync and async paths.

    :meth:`reserve` books the next free slot under a lock and returns how long to wait for it; callers
    sleep (``time.sleep`` or ``asyncio.sleep``) outside the lock. Scope: one hook instance (one task or
    one trigger). Bound concurrency across tasks with an Airflow pool.
    """

    WINDOW_S = 60.0

    def __init__(self, per_minute: int):
        if per_minute < 1:
            raise ValueError("per_minute must be >= 1")
        self.per_minute = per_minute
        self._granted: deque[float] = deque()
        self._lock = threading.Lock()

    def reserve(self) -> float:
        with self._lock:
            now = time.monotonic()
            while self._granted and self._granted[0] <= now - self.WINDOW_S:
                self._granted.popleft()
            if len(self._granted) < self.per_minute:
                slot = now
            else:
                slot = max(now, self._granted[-self.per_minute] + self.WINDOW_S)
            if self._granted:
                slot = max(slot, self._granted[-1])
            self._granted.append(slot)
            # Only the last ``per_minute`` grants matter for the next booking.
            while len(self._granted) > self.per_minute:
                self._granted.popleft()
            return max(slot - now, 0.0)


# --------------------------------------------------------------------------------------------------
# Settings and retry verdicts
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LeapiConnectionSettings:
    """What the hook reads from its Airflow connection (explicit hook arguments override the extras)."""

    base_url: str
    api_key: str
    timeout: float
    rate_limit_per_minute: int | None
    max_retries: int
    idempotency: IdempotencyMode


@dataclass(frozen=True)
class DownloadedResult:
    """What :meth:`LeapiHook.download_result` wrote to the file object."""

    byte_count: int
    sha256: str
    content_type: str | None
    #: The ``Content-Length`` the server announced, if any (already checked against ``byte_count``).
    content_length: int | None


class _Verdict(enum.Enum):
    OK = "ok"
    RETRY = "retry"
    #: A submit failed after its body may have been processed.
    AMBIGUOUS = "ambiguous"


@dataclass
class _Outcome:
    verdict: _Verdict
    reason: str = ""
    retry_after: float | None = None
    error: LeapiError | None = None


def _extra(extras: dict[str, Any], name: str) -> Any:
    """An extra by its plain name, or by the ``extra__leapi__<name>`` form of form-widget fields."""
    value = extras.get(name)
    if value in (None, ""):
        value = extras.get(f"extra__leapi__{name}")
    return None if value in (None, "") else value


def normalize_base_url(host: str | None, *, schema: str | None = None, port: int | None = None) -> str:
    """The API base URL from a connection's host (a full URL or a bare host name).

    The docs print the base URL as ``https://api.letsenhance.io/v1/pipeline/``; a pasted ``/v1/...``
    suffix is dropped because the hook adds the paths itself.
    """
    if not host:
        return DEFAULT_BASE_URL
    text = host.strip()
    if "://" not in text:
        text = f"{schema or 'https'}://{text}"
    parts = urlsplit(text)
    netloc = parts.netloc
    if port and parts.port is None:
        netloc = f"{netloc}:{port}"
    path = re.sub(r"/v1(/pipeline|/me/usage)?/?$", "", parts.path.rstrip("/"))
    return urlunsplit((parts.scheme, netloc, path.rstrip("/"), "", ""))


def retry_after_seconds(headers: httpx.Headers) -> float | None:
    """Seconds the server asks to wait: ``Retry-After`` (seconds or HTTP date), else ``RateLimit-Reset``."""
    value = headers.get("Retry-After")
    if value:
        try:
            return max(float(value), 0.0)
        except ValueError:
            try:
                return max(parsedate_to_datetime(value).timestamp() - time.time(), 0.0)
            except (TypeError, ValueError):
                pass
    for name in ("RateLimit-Reset", "X-RateLimit-Reset"):
        value = headers.get(name)
        if value:
            try:
                seconds = float(value)
            except ValueError:
                continue
            # Some servers send an epoch timestamp instead of a delta.
            if seconds > 1_000_000_000:
                seconds -= time.time()
            return max(seconds, 0.0)
    return None


def _body_excerpt(response: httpx.Response, limit: int = 300) -> str:
    try:
        text = response.text
    except Exception:  # noqa: BLE001 - an undecodable body just has no excerpt
        return ""
    return redact_text(text[:limit])


def _json_or_none(response: httpx.Response) -> Any:
    try:
        return response.json()
    except (ValueError, UnicodeDecodeError):
        return None


class LeapiHook(BaseHook):
    """Talks to the Let's Enhance API (or ``leapi-server``) through one connection.

    Connection (type ``leapi``): **host** the base URL (default ``https://api.letsenhance.io``),
    **password** the API key, **extra** ``{"timeout": 30, "rate_limit_per_minute": 60, "max_retries": 6,
    "idempotency": "auto"}`` (all optional).

    The hook keeps one ``httpx.Client`` and one ``httpx.AsyncClient`` built from the same connection;
    use it as a (async) context manager, or call :meth:`close` / :meth:`aclose`, to release them. In async
    code (triggers) the connection is fetched asynchronously.

    :param leapi_conn_id: the Airflow connection id.
    :param timeout: per-request timeout in seconds (overrides the ``timeout`` extra).
    :param max_retries: retries per request after the first attempt (overrides ``max_retries``).
    :param rate_limit_per_minute: client-side limit on API requests (overrides the extra); 0 disables.
    :param idempotency: ``auto`` / ``always`` / ``never`` (overrides the extra), see :class:`IdempotencyMode`.
    :param backoff_base: first backoff in seconds; it doubles each retry (with jitter) up to ``backoff_max``.
    :param backoff_max: the longest backoff in seconds.
    """

    conn_name_attr = "leapi_conn_id"
    default_conn_name = "leapi_default"
    conn_type = "leapi"
    hook_name = "Let's Enhance (LEAPI)"

    #: Whether a base URL advertised idempotency support, shared by every hook in the process.
    _idempotency_support: ClassVar[dict[str, bool]] = {}
    _idempotency_support_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(
        self,
        leapi_conn_id: str = default_conn_name,
        *,
        timeout: float | None = None,
        max_retries: int | None = None,
        rate_limit_per_minute: int | None = None,
        idempotency: IdempotencyMode | str | None = None,
        backoff_base: float = DEFAULT_BACKOFF_BASE_S,
        backoff_max: float = DEFAULT_BACKOFF_MAX_S,
        logger_name: str | None = None,
    ) -> None:
        super().__init__(logger_name=logger_name)
        self.leapi_conn_id = leapi_conn_id
        self._timeout_override = timeout
        self._max_retries_override = max_retries
        self._rate_limit_override = rate_limit_per_minute
        self._idempotency_override = IdempotencyMode(idempotency) if idempotency is not None else None
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self._settings: LeapiConnectionSettings | None = None
        self._client: httpx.Client | None = None
        self._async_client: httpx.AsyncClient | None = None
        self._download_client: httpx.Client | None = None
        self._limiter: SlidingWindowRateLimiter | None = None
        self._settings_lock = threading.Lock()

    # -- connection ---------------------------------------------------------------------------------

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        """Connection form: only host (base URL), password (API key) and extra are shown."""
        return {
            "hidden_fields": list(LEAPI_UI_FIELD_BEHAVIOUR["hidden-fields"]),
            "relabeling": dict(LEAPI_UI_FIELD_BEHAVIOUR["relabeling"]),
            "placeholders": dict(LEAPI_UI_FIELD_BEHAVIOUR["placeholders"]),
        }

    def _build_settings(self, conn: Any, extras: dict[str, Any]) -> LeapiConnectionSettings:
        api_key = conn.password or _extra(extras, "api_key") or ""
        if not api_key:
            raise LeapiError(
                f"Connection {self.leapi_conn_id!r} has no API key: put it in the connection's password."
            )
        timeout = self._timeout_override or _extra(extras, "timeout") or DEFAULT_TIMEOUT_S
        max_retries = self._max_retries_override
        if max_retries is None:
            max_retries = _extra(extras, "max_retries")
        rate = self._rate_limit_override
        if rate is None:
            rate = _extra(extras, "rate_limit_per_minute")
        idempotency = self._idempotency_override or IdempotencyMode(
            str(_extra(extras, "idempotency") or IdempotencyMode.AUTO.value).lower()
        )
        return LeapiConnectionSettings(
            base_url=normalize_base_url(conn.host, schema=conn.schema, port=conn.port),
            api_key=api_key,
            timeout=float(timeout),
            rate_limit_per_minute=int(rate) if rate else None,
            max_retries=DEFAULT_MAX_RETRIES if max_retries is None else int(max_retries),
            idempotency=idempotency,
        )

    def _adopt_settings(self, settings: LeapiConnectionSettings) -> LeapiConnectionSettings:
        with self._settings_lock:
            if self._settings is None:
                self._settings = settings
                if settings.rate_limit_per_minute:
                    self._limiter = SlidingWindowRateLimiter(settings.rate_limit_per_minute)
            return self._settings

    @property
    def settings(self) -> LeapiConnectionSettings:
        """The connection's settings, fetched synchronously once (use :meth:`aget_settings` in async code)."""
        if self._settings is None:
            conn = self.get_connection(self.leapi_conn_id)
            settings = self._build_settings(conn, conn.extra_dejson)
            _mask_secret(settings.api_key)
            self._adopt_settings(settings)
        assert self._settings is not None
        return self._settings

    async def aget_settings(self) -> LeapiConnectionSettings:
        """The connection's settings, fetched without blocking the event loop (safe in a trigger)."""
        if self._settings is None:
            from airflow.providers.common.compat.connection import (
                get_async_connection,
                get_async_extra_dejson,
            )

            conn = await get_async_connection(self.leapi_conn_id, hook=self)
            extras = await get_async_extra_dejson(conn)
            settings = self._build_settings(conn, extras)
            await _amask_secret(settings.api_key)
            self._adopt_settings(settings)
        assert self._settings is not None
        return self._settings

    def _client_kwargs(self, settings: LeapiConnectionSettings) -> dict[str, Any]:
        return {
            "base_url": settings.base_url,
            "headers": {
                API_KEY_HEADER: settings.api_key,
                "User-Agent": USER_AGENT,
                "Accept": "application/json",
            },
            "timeout": httpx.Timeout(settings.timeout, connect=min(settings.timeout, 10.0)),
            "verify": shared_tls_context(),
        }

    def get_conn(self) -> httpx.Client:
        """The sync ``httpx.Client`` (base URL and API key header set)."""
        if self._client is None:
            self._client = httpx.Client(**self._client_kwargs(self.settings))
        return self._client

    async def aget_conn(self) -> httpx.AsyncClient:
        """The ``httpx.AsyncClient`` (base URL and API key header set)."""
        if self._async_client is None:
            settings = await self.aget_settings()
            self._async_client = httpx.AsyncClient(
                **self._client_kwargs(settings),
                limits=httpx.Limits(max_connections=64, max_keepalive_connections=64),
            )
        return self._async_client

    def close(self) -> None:
        for client in (self._client, self._download_client):
            if client is not None:
                client.close()
        self._client = self._download_client = None

    async def aclose(self) -> None:
        if self._async_client is not None:
            await self._async_client.aclose()
            self._async_client = None
        self.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- public API ---------------------------------------------------------------------------------

    def test_connection(self) -> tuple[bool, str]:
        """Reads ``/v1/me/usage/`` with the connection's key."""
        try:
            usage = self.get_usage()
        except Exception as exc:  # noqa: BLE001 - the UI shows whatever went wrong
            return False, f"{type(exc).__name__}: {exc}"
        remaining = usage.credits_remaining
        return True, "Connected to LEAPI" + (
            f"; {remaining} credits remaining" if remaining is not None else ""
        )

    def submit_pipeline(
        self, request: PipelineRequest | dict[str, Any], *, idempotency_key: str | None = None
    ) -> int:
        """``POST /v1/pipeline``; returns the id of the ACCEPTED pipeline.

        :param request: the pipeline request (a model or its dict form, validated here).
        :param idempotency_key: sent as ``Idempotency-Key``; a random one when not given. Pass a key derived
            from the task's identity (:func:`derive_idempotency_key`) to make task retries safe.
        :raises LeapiRejectedError: REJECTED for another reason than the rate limit.
        :raises LeapiSubmitUncertainError: the pipeline may or may not exist (see the module docstring).
        """
        body, headers = self._submit_parts(request, idempotency_key, self.settings)
        response = self._request("POST", PIPELINE_PATH, json=body, headers=headers, submit=True)
        return self._accepted_pipeline(response).id

    async def asubmit_pipeline(
        self, request: PipelineRequest | dict[str, Any], *, idempotency_key: str | None = None
    ) -> int:
        """Async twin of :meth:`submit_pipeline`."""
        body, headers = self._submit_parts(request, idempotency_key, await self.aget_settings())
        response = await self._arequest("POST", PIPELINE_PATH, json=body, headers=headers, submit=True)
        return self._accepted_pipeline(response).id

    def get_pipeline(self, pipeline_id: int) -> Pipeline:
        """``GET /v1/pipeline/{id}``."""
        response = self._request("GET", f"{PIPELINE_PATH}/{int(pipeline_id)}")
        return PipelineEnvelope.model_validate(response.json()).pipeline

    async def aget_pipeline(self, pipeline_id: int) -> Pipeline:
        """Async twin of :meth:`get_pipeline`."""
        response = await self._arequest("GET", f"{PIPELINE_PATH}/{int(pipeline_id)}")
        return PipelineEnvelope.model_validate(response.json()).pipeline

    def get_usage(self) -> Usage:
        """``GET /v1/me/usage/``: credits used and left this month."""
        return Usage.model_validate(self._request("GET", USAGE_PATH).json())

    async def aget_usage(self) -> Usage:
        """Async twin of :meth:`get_usage`."""
        return Usage.model_validate((await self._arequest("GET", USAGE_PATH)).json())

    def pipeline_url(self, pipeline_id: int) -> str:
        """The API URL of a pipeline (what the task's extra link shows)."""
        return f"{self.settings.base_url}{PIPELINE_PATH}/{int(pipeline_id)}"

    def download_result(
        self, url: str, fileobj: IO[bytes], *, chunk_size: int = DOWNLOAD_CHUNK_BYTES
    ) -> DownloadedResult:
        """Stream a result (its ``tmp_url``) into ``fileobj``, chunk by chunk, never whole in memory.

        The API key is not sent: a result URL is signed and usually points at another host. Transient
        failures restart the download from the beginning when ``fileobj`` is seekable.

        :raises LeapiHTTPError: the URL answered 4xx (403 usually means it expired), or retries ran out.
        """
        settings = self.settings
        if self._download_client is None:
            self._download_client = httpx.Client(
                timeout=httpx.Timeout(settings.timeout, connect=min(settings.timeout, 10.0)),
                headers={"User-Agent": USER_AGENT},
                follow_redirects=True,
                verify=shared_tls_context(),
            )
        client = self._download_client
        start = fileobj.tell() if fileobj.seekable() else None
        attempt = 0
        while True:
            written = 0
            digest = hashlib.sha256()
            try:
                with client.stream("GET", url) as response:
                    if response.status_code >= 400:
                        response.read()
                        status = response.status_code
                        if status not in (408, 429) and status < 500:
                            raise self._http_error(response, api=False)
                        outcome = _Outcome(
                            _Verdict.RETRY, f"HTTP {status}", retry_after_seconds(response.headers)
                        )
                    else:
                        for chunk in response.iter_bytes(chunk_size):
                            fileobj.write(chunk)
                            digest.update(chunk)
                            written += len(chunk)
                        announced = response.headers.get("Content-Length")
                        length = int(announced) if announced and announced.isdigit() else None
                        if length is not None and length != written:
                            raise httpx.RemoteProtocolError(
                                f"got {written} bytes of the announced {length}", request=response.request
                            )
                        return DownloadedResult(
                            byte_count=written,
                            sha256=digest.hexdigest(),
                            content_type=response.headers.get("Content-Type"),
                            content_length=length,
                        )
            except _TRANSIENT_ERRORS as exc:
                outcome = _Outcome(_Verdict.RETRY, reason=f"{type(exc).__name__}: {exc}")
            if start is None and written:
                raise LeapiHTTPError(
                    f"Download of {redact_url(url)} broke after {written} bytes ({outcome.reason}) and the "
                    "destination cannot be rewound to retry it",
                    status_code=None,
                    method="GET",
                    url=redact_url(url),
                    detail=outcome.reason,
                )
            if attempt >= settings.max_retries:
                raise LeapiHTTPError(
                    f"Download of {redact_url(url)} failed after {attempt + 1} attempts: {outcome.reason}",
                    status_code=None,
                    method="GET",
                    url=redact_url(url),
                    detail=outcome.reason,
                )
            delay = self._backoff_delay(attempt, outcome.retry_after)
            self._log_backoff("GET", redact_url(url), outcome.reason, delay, attempt)
            self._sleep(delay)
            if start is not None:
                fileobj.seek(start)
                fileobj.truncate()
            attempt += 1

    # -- request machinery --------------------------------------------------------------------------

    def _sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    async def _asleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    @staticmethod
    def _submit_parts(
        request: PipelineRequest | dict[str, Any],
        idempotency_key: str | None,
        settings: LeapiConnectionSettings,
    ) -> tuple[dict[str, Any], dict[str, str]]:
        model = request if isinstance(request, PipelineRequest) else PipelineRequest.model_validate(request)
        headers: dict[str, str] = {}
        if settings.idempotency is not IdempotencyMode.NEVER:
            # One key for every attempt of this call, so that the server can dedupe the retries.
            headers[IDEMPOTENCY_KEY_HEADER] = idempotency_key or f"leapi-{uuid.uuid4().hex}"
        return model.to_wire(), headers

    def _accepted_pipeline(self, response: httpx.Response) -> Pipeline:
        parsed = SubmitResponse.model_validate(response.json())
        if parsed.status is not SubmitStatus.ACCEPTED or parsed.pipeline is None:
            raise LeapiRejectedError(
                parsed.reason or "no pipeline in the answer", status_code=response.status_code
            )
        self.log.info("LEAPI accepted pipeline %s", parsed.pipeline.id)
        return parsed.pipeline

    def _note_idempotency_support(self, response: httpx.Response) -> None:
        value = response.headers.get(IDEMPOTENCY_SUPPORT_HEADER)
        if value is None or self._settings is None:
            return
        with self._idempotency_support_lock:
            self._idempotency_support[self._settings.base_url] = value.strip().lower() == "supported"

    def _idempotency_known(self) -> bool | None:
        """``True``/``False`` once the server said; ``None`` while it has not (``auto`` mode only)."""
        settings = self._settings
        assert settings is not None
        if settings.idempotency is IdempotencyMode.ALWAYS:
            return True
        if settings.idempotency is IdempotencyMode.NEVER:
            return False
        return self._idempotency_support.get(settings.base_url)

    @staticmethod
    def _http_error(response: httpx.Response, *, api: bool = True) -> LeapiHTTPError:
        """The error for a non-retryable HTTP answer; ``api=False`` for result URLs (no key involved)."""
        status = response.status_code
        method = response.request.method
        detail = _body_excerpt(response)
        redacted = redact_url(response.url)
        message = f"LEAPI {method} {redacted} answered HTTP {status}: {detail}"
        if status in (401, 403) and api:
            return LeapiAuthError(
                message + " (check the API key in the connection's password)",
                status_code=status,
                method=method,
                url=redacted,
                detail=detail,
            )
        if status == 404 and api:
            return LeapiNotFoundError(message, status_code=status, method=method, url=redacted, detail=detail)
        return LeapiHTTPError(message, status_code=status, method=method, url=redacted, detail=detail)

    def _judge_response(self, response: httpx.Response, *, submit: bool) -> _Outcome:
        status = response.status_code
        if status == 429:
            return _Outcome(_Verdict.RETRY, "rate limited (HTTP 429)", retry_after_seconds(response.headers))
        if status >= 500 or status == 408:
            verdict = _Verdict.AMBIGUOUS if submit else _Verdict.RETRY
            return _Outcome(verdict, f"HTTP {status}", retry_after_seconds(response.headers))
        if status in (401, 403, 404):
            return _Outcome(_Verdict.OK, error=self._http_error(response))
        body = _json_or_none(response)
        if isinstance(body, dict) and body.get("status") == SubmitStatus.REJECTED.value:
            # The documented refusal: no pipeline was created and no credit charged.
            parsed = SubmitResponse.model_validate(body)
            if parsed.is_rate_limited:
                return _Outcome(
                    _Verdict.RETRY, "rate limited (REJECTED)", retry_after_seconds(response.headers)
                )
            return _Outcome(_Verdict.OK, error=LeapiRejectedError(parsed.reason or "", status_code=status))
        if 200 <= status < 300:
            return _Outcome(_Verdict.OK)
        return _Outcome(_Verdict.OK, error=self._http_error(response))

    @staticmethod
    def _judge_transport_error(exc: httpx.TransportError, *, submit: bool) -> _Outcome | None:
        """The retry verdict of a transport error, ``None`` when it is not transient (re-raise it)."""
        reason = f"{type(exc).__name__}: {exc}".rstrip(": ")
        if isinstance(exc, _NOT_SENT_ERRORS):
            return _Outcome(_Verdict.RETRY, reason)
        if isinstance(exc, _TRANSIENT_ERRORS):
            return _Outcome(_Verdict.AMBIGUOUS if submit else _Verdict.RETRY, reason)
        return None

    def _backoff_delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            # Honour the server's wait; a little jitter so that many clients do not return in lockstep.
            wait = min(retry_after, MAX_RETRY_AFTER_S)
            return wait + random.uniform(0, min(1.0, 0.1 * wait + 0.05))
        ceiling = min(self.backoff_max, self.backoff_base * (2**attempt))
        return ceiling / 2 + random.uniform(0, ceiling / 2)

    def _log_backoff(self, method: str, target: str, reason: str, delay: float, attempt: int) -> None:
        max_retries = self._settings.max_retries if self._settings else DEFAULT_MAX_RETRIES
        self.log.warning(
            "LEAPI %s %s: %s; backoff %.2fs before retry %d/%d",
            method,
            target,
            reason,
            delay,
            attempt + 1,
            max_retries,
        )

    def _uncertain_error(
        self, headers: dict[str, str], reason: str, attempts: int
    ) -> LeapiSubmitUncertainError:
        key = headers.get(IDEMPOTENCY_KEY_HEADER)
        supported = self._idempotency_known()
        if supported:
            advice = (
                "Retrying the task is safe: it sends the same Idempotency-Key, which returns the pipeline "
                "if it was created."
            )
        else:
            advice = (
                "The server does not advertise idempotent submits, so the hook did not resubmit (that could "
                "charge twice). Check the account's pipelines/usage before re-running, or set the "
                "connection extra idempotency=always if the server dedupes on Idempotency-Key."
            )
        return LeapiSubmitUncertainError(
            f"LEAPI submit failed after {attempts} attempt(s) ({reason}); the pipeline may have been "
            f"created (Idempotency-Key {key}). {advice}",
            idempotency_key=key,
        )

    def _next_step(
        self, outcome: _Outcome, *, attempt: int, method: str, path: str, headers: dict[str, str]
    ) -> float:
        """Raise if the request must not be retried; else the delay before the next attempt."""
        settings = self._settings
        assert settings is not None
        if outcome.verdict is _Verdict.AMBIGUOUS and not self._idempotency_known():
            raise self._uncertain_error(headers, outcome.reason, attempt + 1)
        if attempt >= settings.max_retries:
            if outcome.verdict is _Verdict.AMBIGUOUS:
                raise self._uncertain_error(headers, outcome.reason, attempt + 1)
            raise LeapiHTTPError(
                f"LEAPI {method} {path} failed after {attempt + 1} attempts: {outcome.reason}",
                status_code=None,
                method=method,
                url=path,
                detail=outcome.reason,
            )
        delay = self._backoff_delay(attempt, outcome.retry_after)
        self._log_backoff(method, path, outcome.reason, delay, attempt)
        return delay

    def _request(
        self,
        method: str,
        path: str,
        *,
        json: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        submit: bool = False,
    ) -> httpx.Response:
        client = self.get_conn()
        headers = headers or {}
        attempt = 0
        while True:
            if self._limiter is not None and (wait := self._limiter.reserve()) > 0:
                self._sleep(wait)
            try:
                response = client.request(method, path, json=json, headers=headers)
            except httpx.TransportError as exc:
                outcome = self._judge_transport_error(exc, submit=submit)
                if outcome is None:
                    raise
            else:
                self._note_idempotency_support(response)
                outcome = self._judge_response(response, submit=submit)
                if outcome.verdict is _Verdict.OK:
                    if outcome.error is not None:
                        raise outcome.error
                    return response
            if outcome.verdict is _Verdict.AMBIGUOUS and self._idempotency_known() is None:
                self._probe_idempotency_support()
            self._sleep(self._next_step(outcome, attempt=attempt, method=method, path=path, headers=headers))
            attempt += 1

    async def _arequest(
        self,
        method: str,
        path: str,
        *,
        json: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        submit: bool = False,
    ) -> httpx.Response:
        client = await self.aget_conn()
        headers = headers or {}
        attempt = 0
        while True:
            if self._limiter is not None and (wait := self._limiter.reserve()) > 0:
                await self._asleep(wait)
            try:
                response = await client.request(method, path, json=json, headers=headers)
            except httpx.TransportError as exc:
                outcome = self._judge_transport_error(exc, submit=submit)
                if outcome is None:
                    raise
            else:
                self._note_idempotency_support(response)
                outcome = self._judge_response(response, submit=submit)
                if outcome.verdict is _Verdict.OK:
                    if outcome.error is not None:
                        raise outcome.error
                    return response
            if outcome.verdict is _Verdict.AMBIGUOUS and self._idempotency_known() is None:
                await self._aprobe_idempotency_support()
            await self._asleep(
                self._next_step(outcome, attempt=attempt, method=method, path=path, headers=headers)
            )
            attempt += 1

    def _probe_idempotency_support(self) -> None:
        """After an ambiguous submit failure, learn whether the server dedupes (one cheap GET)."""
        try:
            self._note_idempotency_support(self._request("GET", USAGE_PATH))
        except LeapiError as exc:
            self.log.warning("Could not learn whether LEAPI supports idempotent submits: %s", exc)

    async def _aprobe_idempotency_support(self) -> None:
        try:
            self._note_idempotency_support(await self._arequest("GET", USAGE_PATH))
        except LeapiError as exc:
            self.log.warning("Could not learn whether LEAPI supports idempotent submits: %s", exc)
