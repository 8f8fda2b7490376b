"""What :class:`leapi.Client` and :class:`leapi.AsyncClient` share: settings, request bodies, answer parsing."""

from __future__ import annotations

import logging
import os
import ssl
from collections.abc import Mapping
from importlib.metadata import version
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from leapi.constants import (
    API_KEY_HEADER,
    IDEMPOTENCY_KEY_HEADER,
    IDEMPOTENT_REPLAY_HEADER,
    PIPELINE_PATH,
)
from leapi.errors import LeapiRateLimitError, LeapiResponseError
from leapi.idempotency import IdempotencyMode, random_idempotency_key
from leapi.models import Pipeline, PipelineEnvelope, PipelineRequest, SubmitResponse, Usage
from leapi.ratelimit import SHARED_LIMITERS, Booking
from leapi.redaction import install_log_redaction
from leapi.transport import (
    Outcome,
    RequestAttempts,
    RetryPolicy,
    SlidingWindowRateLimiter,
    Verdict,
    normalize_base_url,
    shared_tls_context,
)

#: Read when ``api_key`` is not given.
API_KEY_ENV = "LEAPI_API_KEY"
#: Read when ``base_url`` is not given (else the public API).
BASE_URL_ENV = "LEAPI_BASE_URL"
DEFAULT_USER_AGENT = f"leapi-python/{version('leapi')}"
#: Connections per client (a whole batch of polls may be in flight at once in async code).
MAX_CONNECTIONS = 64

log = logging.getLogger("leapi")
_Model = TypeVar("_Model", bound=BaseModel)


class ClientBase:
    """Settings and everything that is not I/O. Constructor arguments: see :class:`leapi.Client`."""

    def __init__(
        self,
        *,
        api_key: str | None,
        base_url: str | None,
        timeout: float,
        max_retries: int,
        rate_limit_budget: float,
        rate_limit_per_minute: int | None,
        idempotency: IdempotencyMode | str,
        backoff_base: float,
        backoff_max: float,
        verify: ssl.SSLContext | bool,
        user_agent: str | None,
    ) -> None:
        key = api_key if api_key is not None else os.environ.get(API_KEY_ENV, "")
        if not key:
            raise ValueError(f"no LEAPI API key: pass api_key=... or set {API_KEY_ENV}")
        self._api_key = key
        self.base_url = normalize_base_url(base_url or os.environ.get(BASE_URL_ENV))
        self.timeout = float(timeout)
        self.idempotency = IdempotencyMode(idempotency.lower())
        self.retry_policy = RetryPolicy(
            max_retries=int(max_retries),
            backoff_base=backoff_base,
            backoff_max=backoff_max,
            rate_limit_budget=float(rate_limit_budget),
        )
        self.rate_limit_per_minute = int(rate_limit_per_minute) if rate_limit_per_minute else None
        self._limiter = (
            SlidingWindowRateLimiter(self.rate_limit_per_minute) if self.rate_limit_per_minute else None
        )
        #: The account's request pacing, learned from refusals and shared by every client of this process.
        self.account_limiter = SHARED_LIMITERS.for_account(self.base_url, key)
        #: Seconds this client waited on the rate limit (booked slots and refused retries), for logs.
        self.rate_limit_waited_s = 0.0
        #: The longest of those waits, in seconds (a planned slot, or a refused request's retry delay).
        self.rate_limit_longest_wait_s = 0.0
        self._verify: ssl.SSLContext | bool = shared_tls_context() if verify is True else verify
        self.user_agent = user_agent or DEFAULT_USER_AGENT
        install_log_redaction()

    def __repr__(self) -> str:
        # (never the API key)
        return f"{type(self).__name__}(base_url={self.base_url!r})"

    def _http_kwargs(self, *, api: bool) -> dict[str, Any]:
        """httpx client arguments: the API client sends the key; the download client never does."""
        headers = {"User-Agent": self.user_agent}
        if api:
            headers |= {API_KEY_HEADER: self._api_key, "Accept": "application/json"}
        kwargs: dict[str, Any] = {
            "headers": headers,
            "timeout": httpx.Timeout(self.timeout, connect=min(self.timeout, 10.0)),
            "verify": self._verify,
            "limits": httpx.Limits(
                max_connections=MAX_CONNECTIONS, max_keepalive_connections=MAX_CONNECTIONS
            ),
        }
        if api:
            kwargs["base_url"] = self.base_url
        else:
            # Result URLs (S3 presigned URLs) may redirect; the API itself is not expected to.
            kwargs["follow_redirects"] = True
        return kwargs

    def _attempts(self, method: str, path: str, *, submit: bool, headers: dict[str, str]) -> RequestAttempts:
        return RequestAttempts(
            method=method,
            path=path,
            submit=submit,
            headers=headers,
            policy=self.retry_policy,
            base_url=self.base_url,
            idempotency=self.idempotency,
        )

    def _rate_limit_wait(self) -> float:
        return self._limiter.reserve() if self._limiter is not None else 0.0

    def _book(self, attempts: RequestAttempts) -> Booking:
        """An API request's slot in the account's shared limiter (every request counts in the API's
        limit, status reads too); its wait is counted.

        :raises LeapiRateLimitError: the slot is further away than the request's rate-limit budget allows.
        """
        booking = self.account_limiter.book()
        if booking.wait > 0:
            try:
                attempts.note_rate_limit_wait(booking.wait)
            except LeapiRateLimitError:
                self.account_limiter.cancel(booking)
                raise
            self.rate_limit_waited_s += booking.wait
            self.rate_limit_longest_wait_s = max(self.rate_limit_longest_wait_s, booking.wait)
            log.info(
                "LEAPI: waiting %.1fs for a request slot of the account's learned rate limit", booking.wait
            )
        return booking

    def _settle(self, booking: Booking | None, outcome: Outcome, delay: float | None = None) -> None:
        """Tell the shared limiter how a booked request went, and count a rate-limit retry's wait."""
        if booking is not None:
            if outcome.rate_limited and outcome.retry_after is None:
                self.account_limiter.refused(booking)
            elif outcome.rate_limited:
                self.account_limiter.hinted()
            elif outcome.verdict is Verdict.OK:
                self.account_limiter.accepted(booking)
        if delay is not None and outcome.rate_limited:
            self.rate_limit_waited_s += delay
            self.rate_limit_longest_wait_s = max(self.rate_limit_longest_wait_s, delay)

    def _submit_parts(
        self, request: PipelineRequest | Mapping[str, Any], idempotency_key: str | None
    ) -> tuple[dict[str, Any], dict[str, str]]:
        model = request if isinstance(request, PipelineRequest) else PipelineRequest.model_validate(request)
        headers: dict[str, str] = {}
        if self.idempotency is not IdempotencyMode.NEVER:
            # One key for every attempt of this call, so that the server can dedupe the retries.
            headers[IDEMPOTENCY_KEY_HEADER] = idempotency_key or random_idempotency_key()
        return model.to_wire(), headers

    def pipeline_url(self, pipeline_id: int) -> str:
        """The API URL of a pipeline (``GET`` it with the API key header)."""
        return f"{self.base_url}{PIPELINE_PATH}/{int(pipeline_id)}"


def parse_answer(response: httpx.Response, model: type[_Model]) -> _Model:
    """The answer's JSON as ``model``; :class:`~leapi.errors.LeapiResponseError` if it does not fit."""
    try:
        return model.model_validate(response.json())
    except (ValidationError, ValueError) as exc:
        raise LeapiResponseError(
            f"LEAPI {response.request.method} {response.request.url.path} answered HTTP {response.status_code} "
            f"with a body that is not a {model.__name__}: {exc}"
        ) from exc


def accepted_pipeline(response: httpx.Response) -> Pipeline:
    """The pipeline of an ACCEPTED submit answer (REJECTED answers were raised before)."""
    parsed = parse_answer(response, SubmitResponse)
    if parsed.pipeline is None:
        raise LeapiResponseError("LEAPI accepted the submit but its answer holds no pipeline")
    replayed = response.headers.get(IDEMPOTENT_REPLAY_HEADER, "").lower() == "true"
    log.info(
        "LEAPI accepted pipeline %s%s", parsed.pipeline.id, " (an idempotent replay)" if replayed else ""
    )
    return parsed.pipeline


def pipeline_of(response: httpx.Response) -> Pipeline:
    return parse_answer(response, PipelineEnvelope).pipeline


def usage_of(response: httpx.Response) -> Usage:
    return parse_answer(response, Usage)
