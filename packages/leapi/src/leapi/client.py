"""The synchronous LEAPI client (:class:`leapi.AsyncClient` is its twin for event loops)."""

from __future__ import annotations

import ssl
import time
from collections.abc import Mapping, Sequence
from typing import Any, Self, overload

import httpx

from leapi._base import ClientBase, accepted_pipeline, pipeline_of, usage_of
from leapi.constants import PIPELINE_PATH, USAGE_PATH
from leapi.download import (
    DOWNLOAD_CHUNK_BYTES,
    EXPIRED_STATUSES,
    Destination,
    DownloadedResult,
    DownloadTarget,
    VerifiedResult,
    download_error,
    judge_download_answer,
    next_download_delay,
    verify_result,
)
from leapi.errors import LeapiError, LeapiHTTPError
from leapi.idempotency import IdempotencyMode
from leapi.imageinfo import ImageInspector
from leapi.models import Pipeline, PipelineRequest, Usage
from leapi.polling import (
    DEFAULT_INITIAL_POLL_INTERVAL_S,
    DEFAULT_POLL_INTERVAL_S,
    DEFAULT_WAIT_TIMEOUT_S,
    WaitState,
    pipeline_ids_of,
)
from leapi.results import ResultFile
from leapi.transport import (
    DEFAULT_BACKOFF_BASE_S,
    DEFAULT_BACKOFF_MAX_S,
    DEFAULT_MAX_RETRIES,
    DEFAULT_RATE_LIMIT_BUDGET_S,
    DEFAULT_TIMEOUT_S,
    TRANSIENT_ERRORS,
    Outcome,
    Verdict,
    log,
)


class Client(ClientBase):
    """Talks to the Let's Enhance API (``https://api.letsenhance.io``) or a ``leapi-server``.

    Every request is retried with jittered exponential backoff on rate limits, 5xx and network errors
    (honouring ``Retry-After`` / ``RateLimit-Reset``), except that a submit which may have reached the API
    is repeated only when the server dedupes it (see :mod:`leapi.transport`). Thread-safe; use it as a
    context manager, or call :meth:`close`.

    :param api_key: the ``X-API-KEY`` (default: the ``LEAPI_API_KEY`` environment variable).
    :param base_url: the API base URL (default: ``LEAPI_BASE_URL``, else ``https://api.letsenhance.io``); a
        pasted ``/v1/pipeline/`` suffix is ignored.
    :param timeout: seconds per HTTP request (connecting: at most 10).
    :param max_retries: retries of one request after a failure other than the rate limit (network errors,
        5xx), after its first attempt.
    :param rate_limit_budget: seconds one request may spend refused by the API's rate limit (free
        refusals, retried until then; default 600) before :class:`~leapi.errors.LeapiRateLimitError`.
        Submits of one account are paced by a limiter every client of the process shares
        (:mod:`leapi.ratelimit`), which learns the rate from refusals that carry no ``Retry-After``.
    :param rate_limit_per_minute: at most this many API requests start in any 60 s window (per client);
        ``None`` or 0: no client-side limit (the server's still applies, and is waited out).
    :param idempotency: ``auto`` / ``always`` / ``never``: when an ambiguous submit failure may be retried
        (see :class:`~leapi.idempotency.IdempotencyMode`).
    :param backoff_base: the first backoff in seconds; it doubles each retry up to ``backoff_max``.
    :param backoff_max: the longest backoff in seconds.
    :param verify: TLS verification: ``True`` (a CA bundle context shared by every client), ``False``, or
        your own ``ssl.SSLContext``.
    :param user_agent: the ``User-Agent`` header (default ``leapi-python/<version>``).
    """

    def __init__(
        self,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        max_retries: int = DEFAULT_MAX_RETRIES,
        rate_limit_budget: float = DEFAULT_RATE_LIMIT_BUDGET_S,
        rate_limit_per_minute: int | None = None,
        idempotency: IdempotencyMode | str = IdempotencyMode.AUTO,
        backoff_base: float = DEFAULT_BACKOFF_BASE_S,
        backoff_max: float = DEFAULT_BACKOFF_MAX_S,
        verify: ssl.SSLContext | bool = True,
        user_agent: str | None = None,
    ) -> None:
        super().__init__(
            api_key=api_key,
            base_url=base_url,
            timeout=timeout,
            max_retries=max_retries,
            rate_limit_budget=rate_limit_budget,
            rate_limit_per_minute=rate_limit_per_minute,
            idempotency=idempotency,
            backoff_base=backoff_base,
            backoff_max=backoff_max,
            verify=verify,
            user_agent=user_agent,
        )
        self._http = httpx.Client(**self._http_kwargs(api=True))
        # Result URLs are signed and usually on another host: they never get the API key.
        self._downloads = httpx.Client(**self._http_kwargs(api=False))

    def close(self) -> None:
        """Close the connections (the client cannot be used afterwards)."""
        self._http.close()
        self._downloads.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _sleep(self, seconds: float) -> None:
        # (one place to wait: tests replace it to record backoffs instead of waiting for them)
        time.sleep(seconds)

    # -- the API ----------------------------------------------------------------------------------------

    def submit(
        self, request: PipelineRequest | Mapping[str, Any], *, idempotency_key: str | None = None
    ) -> Pipeline:
        """``POST /v1/pipeline``: the ACCEPTED pipeline (its ``id`` is what to wait for).

        :param request: the pipeline request (a model, or its dict form, validated here).
        :param idempotency_key: sent as ``Idempotency-Key`` (a random one when not given). Derive it from
            the job's identity (:func:`~leapi.idempotency.derive_idempotency_key`) to make resubmitting a
            job safe on servers that dedupe.
        :raises LeapiRejectedError: REJECTED for another reason than the rate limit (``reason`` says why).
        :raises LeapiRateLimitError: still rate limited when retries ran out (nothing was charged).
        :raises LeapiSubmitUncertainError: the pipeline may or may not exist (see :mod:`leapi.transport`).
        """
        body, headers = self._submit_parts(request, idempotency_key)
        return accepted_pipeline(
            self._request("POST", PIPELINE_PATH, json=body, headers=headers, submit=True)
        )

    def get_pipeline(self, pipeline_id: int) -> Pipeline:
        """``GET /v1/pipeline/{id}``.

        :raises LeapiNotFoundError: unknown id (or another API key's pipeline).
        """
        return pipeline_of(self._request("GET", f"{PIPELINE_PATH}/{int(pipeline_id)}"))

    def get_usage(self) -> Usage:
        """``GET /v1/me/usage/``: credits used and left this month."""
        return usage_of(self._request("GET", USAGE_PATH))

    @overload
    def wait(
        self,
        pipeline_ids: int,
        *,
        timeout: float | None = ...,
        poll_interval: float = ...,
        initial_poll_interval: float = ...,
        raise_on_error: bool = ...,
    ) -> Pipeline: ...

    @overload
    def wait(
        self,
        pipeline_ids: Sequence[int],
        *,
        timeout: float | None = ...,
        poll_interval: float = ...,
        initial_poll_interval: float = ...,
        raise_on_error: bool = ...,
    ) -> list[Pipeline]: ...

    def wait(
        self,
        pipeline_ids: int | Sequence[int],
        *,
        timeout: float | None = DEFAULT_WAIT_TIMEOUT_S,
        poll_interval: float = DEFAULT_POLL_INTERVAL_S,
        initial_poll_interval: float = DEFAULT_INITIAL_POLL_INTERVAL_S,
        raise_on_error: bool = False,
    ) -> Pipeline | list[Pipeline]:
        """Poll until every pipeline is DONE or ERROR; one id gives one pipeline, several a list (same order).

        The first polls come ``initial_poll_interval`` apart; then each gap is a tenth of the time waited so
        far (a wait ends at most ~10% after the pipelines did), at most ``poll_interval``. Each round reads
        the pending pipelines in the order given (submission order, best) and stops at the first one still
        PROCESSING, so a wait costs about one read per pipeline plus one per round
        (:class:`~leapi.polling.InOrderPoll`; pipelines that finish out of order are still collected).

        :param timeout: seconds to wait (``None``: no limit).
        :param raise_on_error: raise :class:`~leapi.errors.LeapiPipelineFailedError` (after all finished)
            when some ended in ERROR, instead of returning them.
        :raises LeapiWaitTimeoutError: some still run at the deadline (``pending_ids``); they go on.
        """
        state = WaitState(
            pipeline_ids_of(pipeline_ids),
            timeout=timeout,
            poll_interval=poll_interval,
            initial_poll_interval=initial_poll_interval,
        )
        while True:
            for pipeline_id in state.round():
                state.record(self.get_pipeline(pipeline_id))
            gap = state.next_gap()
            if gap is None:
                break
            running, total = len(state.pending), len(state.pipeline_ids)
            log.info("LEAPI: %d of %d pipeline(s) still running; next poll in %.1fs", running, total, gap)
            self._sleep(gap)
        pipelines = state.results(raise_on_error=raise_on_error)
        return pipelines[0] if isinstance(pipeline_ids, int) else pipelines

    def download(
        self, url: str, destination: Destination, *, chunk_size: int = DOWNLOAD_CHUNK_BYTES
    ) -> DownloadedResult:
        """Stream ``url`` (a result's ``tmp_url``; the API key is not sent) to a path or binary stream.

        Complete or nothing: the byte count must match ``Content-Length``; broken attempts start over
        (a stream must be seekable for that). A path is written only once the download completed.

        :raises LeapiHTTPError: the URL answered 4xx (403 usually means expired), or retries ran out.
        """
        with DownloadTarget(destination) as target:
            downloaded = self._stream(url, target, chunk_size)
            target.commit()
        return downloaded

    def download_result(
        self,
        result: ResultFile,
        destination: Destination,
        *,
        inspect: ImageInspector | None = None,
        chunk_size: int = DOWNLOAD_CHUNK_BYTES,
    ) -> VerifiedResult:
        """Download one result (see :func:`~leapi.results.result_files`) and verify it.

        Checks (see :mod:`leapi.download`): not expired, complete, an image of the width, height and format
        the API reported. A path destination is written only when every check passed.

        :param inspect: reads the image's size and format (default: the pure-Python header reader).
        :raises LeapiResultExpiredError: the temp URL expired (or answers 403/404/410): submit the image again.
        :raises LeapiResultVerificationError: the file is not what the API reported.
        """
        if result.is_expired():
            raise result.expired_error("it was not fetched")
        with DownloadTarget(destination) as target:
            try:
                downloaded = self._stream(result.tmp_url, target, chunk_size)
            except LeapiHTTPError as exc:
                if exc.status_code in EXPIRED_STATUSES:
                    raise result.expired_error(f"the URL answered HTTP {exc.status_code}") from exc
                raise
            verified = verify_result(result, target, downloaded, inspect)
            target.commit()
        return verified

    # -- transport --------------------------------------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        *,
        json: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        submit: bool = False,
    ) -> httpx.Response:
        attempts = self._attempts(method, path, submit=submit, headers=headers or {})
        while True:
            booking = self._book(attempts)
            wait = max(self._rate_limit_wait(), booking.wait)
            if wait > 0:
                self._sleep(wait)
            try:
                response = self._http.request(method, path, json=json, headers=attempts.headers)
            except httpx.TransportError as exc:
                outcome = attempts.after_transport_error(exc)
            else:
                outcome = attempts.after_response(response)
                self._settle(booking, outcome)
                if outcome.verdict is Verdict.OK:
                    return response
            if attempts.should_probe(outcome):
                self._probe_idempotency_support()
            delay = attempts.next_delay(outcome)
            self._settle(None, outcome, delay)
            self._sleep(delay)

    def _probe_idempotency_support(self) -> None:
        """After an ambiguous submit failure, learn whether the server dedupes (one cheap GET)."""
        try:
            self._request("GET", USAGE_PATH)  # every answer notes what it advertises
        except LeapiError as exc:
            log.warning("Could not learn whether LEAPI supports idempotent submits: %s", exc)

    def _stream(self, url: str, target: DownloadTarget, chunk_size: int) -> DownloadedResult:
        attempt = 0
        while True:
            target.restart()
            try:
                with self._downloads.stream("GET", url) as response:
                    if response.status_code >= 400:
                        response.read()
                    outcome = judge_download_answer(response)
                    if outcome is None:
                        for chunk in response.iter_bytes(chunk_size):
                            target.write(chunk)
                        return target.finish(response)
            except TRANSIENT_ERRORS as exc:
                outcome = Outcome(Verdict.RETRY, f"{type(exc).__name__}: {exc}")
            except httpx.HTTPError as exc:
                raise download_error(url, exc) from exc
            policy = self.retry_policy
            self._sleep(next_download_delay(outcome, target=target, attempt=attempt, policy=policy, url=url))
            attempt += 1
