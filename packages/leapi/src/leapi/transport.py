"""Retry rules of the LEAPI client, without I/O: :class:`RequestAttempts` judges each answer or transport
error of one request and says what to do next; :class:`~leapi.Client` and :class:`~leapi.AsyncClient` do the
sending and the sleeping. The same decisions therefore hold for sync and async code.

* Reads (``GET`` of a pipeline, of the usage) are retried on connection errors, timeouts, dropped
  connections, 5xx and 408, with exponential backoff and jitter, honouring ``Retry-After`` /
  ``RateLimit-Reset``, up to ``max_retries`` times.
* A rate-limit refusal (HTTP 429, or the REJECTED "Too Many Requests" body whatever the status) costs
  nothing, so it is retried for a time budget (``rate_limit_budget``, default 10 minutes; the waits for
  the shared limiter's slots count in it too, and a slot beyond it is not waited for), not a count:
  honouring ``Retry-After`` / ``RateLimit-Reset`` when the server sends one; without one, the request
  waits for the slot the account's shared limiter books (:mod:`leapi.ratelimit`; every API request, reads
  included, is booked there, because the API's limit counts every request it receives).
* A submit (``POST /v1/pipeline``) is retried freely only when the API provably did not take it: the
  connection was never established (connect error, connect or pool timeout), or the answer was the
  documented REJECTED body (the docs: a rejected request costs no credit), whatever its HTTP status.
* Any other submit failure (read timeout, dropped connection, 5xx after the body was sent) is ambiguous:
  the pipeline may exist. It is retried, with the same ``Idempotency-Key``, only when the server dedupes
  on that key (see :mod:`leapi.idempotency`); otherwise :class:`~leapi.errors.LeapiSubmitUncertainError`.
* A REJECTED for another reason than the rate limit raises :class:`~leapi.errors.LeapiRejectedError`;
  401/403 :class:`~leapi.errors.LeapiAuthError`; 404 :class:`~leapi.errors.LeapiNotFoundError`.
"""

from __future__ import annotations

import enum
import functools
import json
import logging
import random
import re
import ssl
import threading
import time
from collections import deque
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from leapi.constants import DEFAULT_BASE_URL, IDEMPOTENCY_KEY_HEADER
from leapi.errors import (
    LeapiAuthError,
    LeapiError,
    LeapiHTTPError,
    LeapiNotFoundError,
    LeapiRateLimitError,
    LeapiRejectedError,
    LeapiSubmitUncertainError,
)
from leapi.idempotency import ADVERTISED, IdempotencyMode, supports_idempotency
from leapi.models import SubmitResponse, SubmitStatus
from leapi.redaction import redact_text, redact_url

DEFAULT_TIMEOUT_S = 30.0
DEFAULT_MAX_RETRIES = 6
DEFAULT_BACKOFF_BASE_S = 1.0
DEFAULT_BACKOFF_MAX_S = 60.0
#: Seconds a request may spend being refused by the rate limit (its refusals cost nothing) before
#: :class:`~leapi.errors.LeapiRateLimitError`; separate from ``max_retries``, which counts other failures.
DEFAULT_RATE_LIMIT_BUDGET_S = 600.0
#: A submit refused without a hint pauses this long (jittered) before the shared limiter books its slot.
UNHINTED_PAUSE_S = (1.0, 3.0)
#: A server asking to wait longer than this is waited for this long (then asked again).
MAX_RETRY_AFTER_S = 300.0

#: Transport errors raised before the request could reach the server: always safe to retry.
NOT_SENT_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
#: Transport errors worth retrying at all (others, e.g. an unsupported scheme, are configuration errors).
TRANSIENT_ERRORS = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)

log = logging.getLogger("leapi")


@functools.cache
def shared_tls_context() -> ssl.SSLContext:
    """One TLS context for every client this process builds.

    httpx builds a fresh context (loading the CA bundle, ~50 ms of CPU) per client; a process building
    hundreds of short-lived clients (an Airflow triggerer) would spend that on its event loop each time.
    """
    return httpx.create_ssl_context()


def normalize_base_url(host: str | None, *, schema: str | None = None, port: int | None = None) -> str:
    """The API base URL from a full URL or a bare host name (``None``/empty: the public API).

    The docs print the base URL as ``https://api.letsenhance.io/v1/pipeline/``; a pasted ``/v1/...`` suffix
    is dropped because the client adds the paths itself.
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


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to back off.

    :param max_retries: retries of one request after its first attempt.
    :param backoff_base: the first backoff in seconds; it doubles each retry up to ``backoff_max``, and a
        random half of each step is jitter (so that many clients do not return in lockstep).
    :param backoff_max: the longest backoff in seconds.
    :param max_retry_after: the longest wait a server's ``Retry-After`` may impose at once.
    :param rate_limit_budget: seconds one request may spend refused by the rate limit.
    """

    max_retries: int = DEFAULT_MAX_RETRIES
    backoff_base: float = DEFAULT_BACKOFF_BASE_S
    backoff_max: float = DEFAULT_BACKOFF_MAX_S
    max_retry_after: float = MAX_RETRY_AFTER_S
    rate_limit_budget: float = DEFAULT_RATE_LIMIT_BUDGET_S

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        if self.rate_limit_budget < 0:
            raise ValueError("rate_limit_budget must be >= 0")

    def delay(self, attempt: int, retry_after: float | None) -> float:
        """Seconds to wait before retry ``attempt + 1`` (``attempt`` counts from 0)."""
        if retry_after is not None:
            wait = min(retry_after, self.max_retry_after)
            return wait + random.uniform(0, min(1.0, 0.1 * wait + 0.05))
        ceiling = min(self.backoff_max, self.backoff_base * (2**attempt))
        return ceiling / 2 + random.uniform(0, ceiling / 2)


class SlidingWindowRateLimiter:
    """At most ``per_minute`` requests start in any 60 s window (one client; thread-safe).

    :meth:`reserve` books the next free slot under a lock and returns how long to wait for it; the caller
    sleeps (``time.sleep`` or ``asyncio.sleep``) outside the lock.
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


class Verdict(enum.Enum):
    OK = "ok"
    RETRY = "retry"
    #: A submit failed after its body may have been processed.
    AMBIGUOUS = "ambiguous"


@dataclass
class Outcome:
    """The judgement of one attempt."""

    verdict: Verdict
    reason: str = ""
    retry_after: float | None = None
    #: For ``OK``: the error to raise instead of returning the answer.
    error: LeapiError | None = None
    status_code: int | None = None
    #: The API's rate limit refused the attempt (``reason`` then holds the API's words).
    rate_limited: bool = False


def body_excerpt(response: httpx.Response, limit: int = 300) -> str:
    try:
        text = response.text
    except Exception:  # noqa: BLE001 - an undecodable body just has no excerpt
        return ""
    return redact_text(text[:limit])


def json_or_none(response: httpx.Response) -> Any:
    try:
        return response.json()
    except (ValueError, UnicodeDecodeError):
        return None


def http_error(response: httpx.Response, *, api: bool = True) -> LeapiHTTPError:
    """The error for a non-retryable HTTP answer; ``api=False`` for result URLs (no key involved)."""
    status = response.status_code
    method = response.request.method
    detail = body_excerpt(response)
    redacted = redact_url(response.url)
    message = f"LEAPI {method} {redacted} answered HTTP {status}: {detail}"
    if status in (401, 403) and api:
        message += " (check the API key)"
        return LeapiAuthError(message, status_code=status, method=method, url=redacted, detail=detail)
    if status == 404 and api:
        return LeapiNotFoundError(message, status_code=status, method=method, url=redacted, detail=detail)
    return LeapiHTTPError(message, status_code=status, method=method, url=redacted, detail=detail)


def _rejection(body: Any) -> SubmitResponse | None:
    """The documented ``{"status": "REJECTED", "reason": ...}`` body, if ``body`` is one."""
    if isinstance(body, dict) and body.get("status") == SubmitStatus.REJECTED.value:
        reason = body.get("reason")
        # (a reason that is not text is still a refusal: keep whatever it says)
        return SubmitResponse(
            status=SubmitStatus.REJECTED, reason=reason if isinstance(reason, str) else json.dumps(reason)
        )
    return None


def judge_response(response: httpx.Response, *, submit: bool) -> Outcome:
    """What an API answer means for the request: done, an error, a safe retry or an ambiguous failure."""
    status = response.status_code
    body = json_or_none(response)
    rejection = _rejection(body)
    retry_after = retry_after_seconds(response.headers)
    if status == 429 or (rejection is not None and rejection.is_rate_limited):
        reason = rejection.reason if rejection is not None and rejection.reason else f"HTTP {status}"
        return Outcome(Verdict.RETRY, reason, retry_after, status_code=status, rate_limited=True)
    if status >= 500 or status == 408:
        if rejection is not None:
            # A refusal in the documented form: nothing was taken, so even a submit may be repeated.
            return Outcome(
                Verdict.RETRY, f"HTTP {status} REJECTED: {rejection.reason}", retry_after, status_code=status
            )
        return Outcome(
            Verdict.AMBIGUOUS if submit else Verdict.RETRY, f"HTTP {status}", retry_after, status_code=status
        )
    if status in (401, 403, 404):
        return Outcome(Verdict.OK, error=http_error(response), status_code=status)
    if rejection is not None:
        error = LeapiRejectedError(rejection.reason or "", status_code=status)
        return Outcome(Verdict.OK, error=error, status_code=status)
    if 200 <= status < 300:
        readable = isinstance(body, dict) and (
            not submit or body.get("status") == SubmitStatus.ACCEPTED.value
        )
        if readable:
            return Outcome(Verdict.OK, status_code=status)
        # (e.g. a proxy's page) For a submit the pipeline may exist all the same.
        reason = f"HTTP {status} with an answer that is not LEAPI's: {body_excerpt(response, 80)!r}"
        return Outcome(Verdict.AMBIGUOUS if submit else Verdict.RETRY, reason, status_code=status)
    return Outcome(Verdict.OK, error=http_error(response), status_code=status)


def judge_transport_error(exc: httpx.TransportError, *, submit: bool) -> Outcome | None:
    """The retry verdict of a transport error, ``None`` when it is not transient."""
    reason = f"{type(exc).__name__}: {exc}".rstrip(": ")
    if isinstance(exc, NOT_SENT_ERRORS):
        return Outcome(Verdict.RETRY, reason)
    if isinstance(exc, TRANSIENT_ERRORS):
        return Outcome(Verdict.AMBIGUOUS if submit else Verdict.RETRY, reason)
    return None


class RequestAttempts:
    """The retry state of one API request; the client sends, this decides.

    :param method: the HTTP method.
    :param path: the path on the API (logged as is: API paths carry no credentials).
    :param submit: whether this is a submit (failures after sending are then ambiguous).
    :param headers: the request's extra headers (an ``Idempotency-Key`` among them for submits).
    :param policy: the retry policy.
    :param base_url: the API base URL (what the server advertised is remembered per base URL).
    :param idempotency: how far ambiguous submit failures may be retried.
    """

    def __init__(
        self,
        *,
        method: str,
        path: str,
        submit: bool,
        headers: dict[str, str],
        policy: RetryPolicy,
        base_url: str,
        idempotency: IdempotencyMode,
    ) -> None:
        self.method = method
        self.path = path
        self.submit = submit
        self.headers = headers
        self.policy = policy
        self.base_url = base_url
        self.idempotency = idempotency
        #: Retries spent on failures other than the rate limit (``policy.max_retries`` of them at most).
        self.attempt = 0
        #: Answers refused by the rate limit, and when the first came (``policy.rate_limit_budget``).
        self.rate_limited = 0
        self._rate_limited_since: float | None = None
        self._rate_limit_waited = 0.0

    def after_response(self, response: httpx.Response) -> Outcome:
        """Judge an answer; raises the answer's error when it is final."""
        ADVERTISED.note(self.base_url, response.headers)
        outcome = judge_response(response, submit=self.submit)
        if outcome.error is not None:
            raise outcome.error
        return outcome

    def after_transport_error(self, exc: httpx.TransportError) -> Outcome:
        """Judge a transport error; raises when no retry can help (e.g. an unsupported URL scheme)."""
        outcome = judge_transport_error(exc, submit=self.submit)
        if outcome is None:
            raise LeapiHTTPError(
                f"LEAPI {self.method} {self.path} failed: {type(exc).__name__}: {exc}",
                status_code=None,
                method=self.method,
                url=self.path,
                detail=str(exc),
            ) from exc
        return outcome

    def should_probe(self, outcome: Outcome) -> bool:
        """Whether to ask the server (one cheap GET) if it dedupes submits before deciding."""
        return outcome.verdict is Verdict.AMBIGUOUS and self._supported() is None

    def note_rate_limit_wait(self, seconds: float) -> None:
        """Count a wait for the account's rate limit (a booked slot) against the rate-limit budget.

        :raises LeapiRateLimitError: the wait would take the request past its budget (nothing is sent).
        """
        spent = self._rate_limit_waited
        if self._rate_limited_since is not None:
            spent = max(spent, time.monotonic() - self._rate_limited_since)
        if spent + seconds > self.policy.rate_limit_budget:
            raise LeapiRateLimitError(
                f"the next request slot of the account's learned rate limit is {seconds:.0f}s away",
                attempts=self.rate_limited,
                budget=self.policy.rate_limit_budget,
            )
        self._rate_limit_waited += seconds

    def next_delay(self, outcome: Outcome) -> float:
        """Seconds to wait before the next attempt; raises when the request must not be retried."""
        if outcome.verdict is Verdict.AMBIGUOUS and not self._supported():
            raise self._uncertain_error(outcome.reason)
        if outcome.rate_limited:
            return self._rate_limited_delay(outcome)
        if self.attempt >= self.policy.max_retries:
            raise self._exhausted_error(outcome)
        delay = self.policy.delay(self.attempt, outcome.retry_after)
        log.warning(
            "LEAPI %s %s: %s; backoff %.2fs before retry %d/%d",
            self.method,
            self.path,
            outcome.reason,
            delay,
            self.attempt + 1,
            self.policy.max_retries,
        )
        self.attempt += 1
        return delay

    def _rate_limited_delay(self, outcome: Outcome) -> float:
        """A free refusal: retried until the time budget is spent (wall time or waits, whichever is more:
        a test that records sleeps instead of sleeping still runs out of budget)."""
        now = time.monotonic()
        if self._rate_limited_since is None:
            self._rate_limited_since = now
        self.rate_limited += 1
        spent = max(now - self._rate_limited_since, self._rate_limit_waited)
        if spent >= self.policy.rate_limit_budget:
            raise self._exhausted_error(outcome)
        if outcome.retry_after is not None:
            delay = self.policy.delay(0, outcome.retry_after)
        else:
            # The account's shared limiter books the retry's slot (up to a minute away): pause briefly only.
            delay = random.uniform(*UNHINTED_PAUSE_S)
        self._rate_limit_waited += delay
        what = "rate limited (HTTP 429)" if outcome.status_code == 429 else "rate limited (REJECTED)"
        log.warning(
            "LEAPI %s %s: %s; backoff %.2fs before retry (%.0fs of the %.0fs rate-limit budget spent)",
            self.method,
            self.path,
            what,
            delay,
            spent,
            self.policy.rate_limit_budget,
        )
        return delay

    def _supported(self) -> bool | None:
        return supports_idempotency(self.idempotency, self.base_url)

    def _exhausted_error(self, outcome: Outcome) -> LeapiError:
        attempts = self.attempt + 1
        if outcome.verdict is Verdict.AMBIGUOUS:
            return self._uncertain_error(outcome.reason)
        if outcome.rate_limited:
            return LeapiRateLimitError(
                outcome.reason,
                status_code=outcome.status_code,
                retry_after=outcome.retry_after,
                attempts=self.rate_limited,
                budget=self.policy.rate_limit_budget,
            )
        return LeapiHTTPError(
            f"LEAPI {self.method} {self.path} failed after {attempts} attempts: {outcome.reason}",
            status_code=outcome.status_code,
            method=self.method,
            url=self.path,
            detail=outcome.reason,
        )

    def _uncertain_error(self, reason: str) -> LeapiSubmitUncertainError:
        key = self.headers.get(IDEMPOTENCY_KEY_HEADER)
        if self._supported():
            advice = (
                "Submitting again with the same Idempotency-Key is safe: it returns the pipeline if it was "
                "created."
            )
        else:
            advice = (
                "The server does not advertise idempotent submits, so the client did not resubmit (that could "
                "charge twice). Check the account's pipelines/usage before submitting again, or use "
                "idempotency='always' if the server dedupes on Idempotency-Key."
            )
        return LeapiSubmitUncertainError(
            f"LEAPI submit failed after {self.attempt + 1} attempt(s) ({reason}); the pipeline may have been "
            f"created (Idempotency-Key {key}). {advice}",
            idempotency_key=key,
        )
