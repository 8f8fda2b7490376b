"""Hook for the Let's Enhance image API (LEAPI): an Airflow connection in, a ``leapi`` client out.

Everything about talking to the API (retries, rate limits, idempotent submits, verified downloads) lives
in the ``leapi`` client (``packages/leapi``, see its README). This hook adds what only Airflow needs:

* the connection (type ``leapi``: host = base URL, password = API key, extras ``timeout``,
  ``max_retries``, ``rate_limit_budget``, ``rate_limit_per_minute``, ``idempotency``), read asynchronously
  in triggers;
* the API key registered with Airflow's secrets masker, the connection form, "Test connection".

It raises the client's own errors (:mod:`leapi.errors`); operators turn the ones no retry can fix into
``AirflowFailException`` at the task boundary (:func:`leapi_provider.exceptions.fail_on_permanent_errors`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Any, Self

from airflow.sdk import BaseHook

import leapi
from leapi.download import VerifiedResult
from leapi.idempotency import IdempotencyMode
from leapi.models import Pipeline, PipelineRequest, Usage
from leapi.polling import DEFAULT_INITIAL_POLL_INTERVAL_S
from leapi.results import ResultFile
from leapi.transport import (
    DEFAULT_BACKOFF_BASE_S,
    DEFAULT_BACKOFF_MAX_S,
    DEFAULT_MAX_RETRIES,
    DEFAULT_RATE_LIMIT_BUDGET_S,
    DEFAULT_TIMEOUT_S,
    normalize_base_url,
)
from leapi_provider.get_provider_info import LEAPI_UI_FIELD_BEHAVIOUR, PACKAGE_VERSION

USER_AGENT = f"airflow-provider-leapi/{PACKAGE_VERSION} leapi-python/{leapi.__version__}"
#: "Test connection" answers within this many seconds, whatever the connection's retry settings: one
#: attempt, no rate-limit retries, and this timeout (connecting included).
TEST_CONNECTION_TIMEOUT_S = 5.0


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


def _extra(extras: Mapping[str, Any], name: str) -> Any:
    """An extra by its name; an empty value counts as not set (what the connection form stores)."""
    value = extras.get(name)
    return None if value in (None, "") else value


@dataclass(frozen=True)
class LeapiConnectionSettings:
    """What the hook reads from its Airflow connection (explicit hook arguments override the extras)."""

    base_url: str
    api_key: str
    timeout: float
    rate_limit_per_minute: int | None
    max_retries: int
    idempotency: IdempotencyMode
    rate_limit_budget: float = DEFAULT_RATE_LIMIT_BUDGET_S


class LeapiHook(BaseHook):
    """Builds ``leapi.Client`` / ``leapi.AsyncClient`` from one Airflow connection, and uses them.

    Connection (type ``leapi``): **host** the base URL (default ``https://api.letsenhance.io``),
    **password** the API key, **extra** ``{"timeout": 30, "rate_limit_per_minute": 60, "max_retries": 6,
    "rate_limit_budget": 600, "idempotency": "auto"}`` (all optional).

    Submits of one account (base URL and key) are paced by a limiter shared by every hook of the process
    (:mod:`leapi.ratelimit`): once the API refused one for its rate limit, parallel tasks in one worker
    take turns instead of competing. Tasks in other workers are not seen by it.

    The hook keeps one client of each kind; use it as a (async) context manager, or call :meth:`close` /
    :meth:`aclose`, to release them. In async code (triggers) the connection is fetched asynchronously.
    Its methods raise the client's errors (:mod:`leapi.errors`).

    :param leapi_conn_id: the Airflow connection id.
    :param timeout: per-request timeout in seconds (overrides the ``timeout`` extra).
    :param max_retries: retries per request after the first attempt (overrides ``max_retries``).
    :param rate_limit_budget: seconds one request may spend refused by the API's rate limit before the
        task fails (overrides the ``rate_limit_budget`` extra; default 600).
    :param rate_limit_per_minute: client-side limit on API requests (overrides the extra); 0 disables.
    :param paced_per_minute: this process's declared share of the account's rate: its requests of the
        account are spaced evenly at it from the first one, or sent in bursts of a window's share when
        that gap is longer than ``rate_limit_budget`` (:meth:`leapi.ratelimit.AdaptiveRateLimiter.pace`);
        ``None``: leave the process's pacing as it is.
    :param idempotency: ``auto`` / ``always`` / ``never`` (overrides the extra), see :class:`IdempotencyMode`.
    :param backoff_base: first backoff in seconds; it doubles each retry (with jitter) up to ``backoff_max``.
    :param backoff_max: the longest backoff in seconds.
    """

    conn_name_attr = "leapi_conn_id"
    default_conn_name = "leapi_default"
    conn_type = "leapi"
    hook_name = "Let's Enhance (LEAPI)"

    def __init__(
        self,
        leapi_conn_id: str = default_conn_name,
        *,
        timeout: float | None = None,
        max_retries: int | None = None,
        rate_limit_budget: float | None = None,
        rate_limit_per_minute: int | None = None,
        paced_per_minute: float | None = None,
        idempotency: IdempotencyMode | str | None = None,
        backoff_base: float = DEFAULT_BACKOFF_BASE_S,
        backoff_max: float = DEFAULT_BACKOFF_MAX_S,
        logger_name: str | None = None,
    ) -> None:
        super().__init__(logger_name=logger_name)
        self.leapi_conn_id = leapi_conn_id
        self._timeout_override = timeout
        self._max_retries_override = max_retries
        self._rate_limit_budget_override = rate_limit_budget
        self._rate_limit_override = rate_limit_per_minute
        self.paced_per_minute = paced_per_minute
        self._idempotency_override = IdempotencyMode(idempotency.lower()) if idempotency is not None else None
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self._settings: LeapiConnectionSettings | None = None
        self._client: leapi.Client | None = None
        self._async_client: leapi.AsyncClient | None = None
        self._lock = threading.Lock()

    # -- connection ---------------------------------------------------------------------------------

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        """Connection form: only host (base URL), password (API key) and extra are shown."""
        return {
            "hidden_fields": list(LEAPI_UI_FIELD_BEHAVIOUR["hidden-fields"]),
            "relabeling": dict(LEAPI_UI_FIELD_BEHAVIOUR["relabeling"]),
            "placeholders": dict(LEAPI_UI_FIELD_BEHAVIOUR["placeholders"]),
        }

    def _build_settings(self, conn: Any, extras: Mapping[str, Any]) -> LeapiConnectionSettings:
        api_key = conn.password or ""
        if not api_key:
            raise ValueError(
                f"Connection {self.leapi_conn_id!r} has no API key: put it in the connection's password."
            )
        timeout = self._timeout_override or _extra(extras, "timeout") or DEFAULT_TIMEOUT_S
        max_retries = self._max_retries_override
        if max_retries is None:
            max_retries = _extra(extras, "max_retries")
        budget = self._rate_limit_budget_override
        if budget is None:
            budget = _extra(extras, "rate_limit_budget")
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
            rate_limit_budget=DEFAULT_RATE_LIMIT_BUDGET_S if budget is None else float(budget),
        )

    def _adopt_settings(self, settings: LeapiConnectionSettings) -> LeapiConnectionSettings:
        with self._lock:
            if self._settings is None:
                self._settings = settings
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
            "api_key": settings.api_key,
            "base_url": settings.base_url,
            "timeout": settings.timeout,
            "max_retries": settings.max_retries,
            "rate_limit_budget": settings.rate_limit_budget,
            "rate_limit_per_minute": settings.rate_limit_per_minute,
            "idempotency": settings.idempotency,
            "backoff_base": self.backoff_base,
            "backoff_max": self.backoff_max,
            "user_agent": USER_AGENT,
        }

    def get_conn(self) -> leapi.Client:
        """The ``leapi.Client`` of this connection (built once)."""
        settings = self.settings
        with self._lock:
            if self._client is None:
                self._client = leapi.Client(**self._client_kwargs(settings))
                self._declare_pace(self._client)
            return self._client

    async def aget_conn(self) -> leapi.AsyncClient:
        """The ``leapi.AsyncClient`` of this connection (built once; the connection is read without blocking)."""
        settings = await self.aget_settings()
        if self._async_client is None:
            self._async_client = leapi.AsyncClient(**self._client_kwargs(settings))
            self._declare_pace(self._async_client)
        return self._async_client

    def _declare_pace(self, client: leapi.Client | leapi.AsyncClient) -> None:
        if self.paced_per_minute is not None:
            # (a gap longer than a request may wait would stop the caller at every request: bursts then)
            budget = client.retry_policy.rate_limit_budget
            client.account_limiter.pace(self.paced_per_minute, max_gap_s=budget)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

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

    # -- the API ----------------------------------------------------------------------------------------

    def test_connection(self) -> tuple[bool, str]:
        """Reads ``/v1/me/usage/`` with the connection's key, once: the answer comes within
        :data:`TEST_CONNECTION_TIMEOUT_S` seconds (about), whatever the connection's retry settings."""
        try:
            settings = self.settings
            kwargs = self._client_kwargs(settings) | {
                "timeout": min(settings.timeout, TEST_CONNECTION_TIMEOUT_S),
                "max_retries": 0,
                "rate_limit_budget": 0.0,
            }
            with leapi.Client(**kwargs) as client:
                usage = client.get_usage()
        except Exception as exc:  # noqa: BLE001 - the UI shows whatever went wrong
            return False, f"{type(exc).__name__}: {exc}"
        remaining = usage.credits_remaining
        return True, "Connected to LEAPI" + (
            f"; {remaining} credits remaining" if remaining is not None else ""
        )

    def submit_pipeline(
        self, request: PipelineRequest | dict[str, Any], *, idempotency_key: str | None = None
    ) -> int:
        """``POST /v1/pipeline``; the id of the ACCEPTED pipeline (see ``leapi.Client.submit``).

        :param request: the pipeline request (a model or its dict form, validated here).
        :param idempotency_key: sent as ``Idempotency-Key``; a random one when not given. Pass a key derived
            from the task's identity (:func:`leapi.idempotency.derive_idempotency_key`) to make task retries
            safe.
        :raises leapi.LeapiRejectedError: REJECTED for another reason than the rate limit.
        :raises leapi.LeapiSubmitUncertainError: the pipeline may or may not exist.
        """
        return self.get_conn().submit(request, idempotency_key=idempotency_key).id

    def get_pipeline(self, pipeline_id: int) -> Pipeline:
        """``GET /v1/pipeline/{id}``."""
        return self.get_conn().get_pipeline(pipeline_id)

    async def aget_pipeline(self, pipeline_id: int) -> Pipeline:
        """Async twin of :meth:`get_pipeline`."""
        return await (await self.aget_conn()).get_pipeline(pipeline_id)

    def get_usage(self) -> Usage:
        """``GET /v1/me/usage/``: credits used and left this month."""
        return self.get_conn().get_usage()

    def wait_for_pipelines(
        self,
        pipeline_ids: Sequence[int],
        *,
        timeout: float | None,
        poll_interval: float,
        initial_poll_interval: float = DEFAULT_INITIAL_POLL_INTERVAL_S,
    ) -> list[Pipeline]:
        """Poll in this worker until every pipeline is DONE or ERROR (``leapi.Client.wait``).

        :raises leapi.LeapiWaitTimeoutError: some still run after ``timeout`` seconds (``pending_ids``).
        """
        return self.get_conn().wait(
            list(pipeline_ids),
            timeout=timeout,
            poll_interval=poll_interval,
            initial_poll_interval=initial_poll_interval,
        )

    def pipeline_url(self, pipeline_id: int) -> str:
        """The API URL of a pipeline (what the task's extra link shows)."""
        return self.get_conn().pipeline_url(pipeline_id)

    def download_verified(self, result: ResultFile, fileobj: IO[bytes]) -> VerifiedResult:
        """Stream ``result`` into ``fileobj`` and verify it (``leapi.Client.download_result``); the API key
        is not sent (a result URL is signed and usually on another host).

        :raises leapi.LeapiResultExpiredError: the temp URL expired.
        :raises leapi.LeapiResultVerificationError: incomplete, not an image, or not the size/format reported.
        """
        return self.get_conn().download_result(result, fileobj)
