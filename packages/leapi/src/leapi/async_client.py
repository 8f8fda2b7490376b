"""The asyncio LEAPI client: :class:`leapi.Client`'s twin, with the same rules (:mod:`leapi.transport`)."""

from __future__ import annotations

import asyncio
import ssl
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


class AsyncClient(ClientBase):
    """The asyncio twin of :class:`leapi.Client`: same arguments, same methods, awaited.

    Use it as an async context manager, or await :meth:`aclose`. Downloads write to their destination
    with ordinary (blocking) file writes, chunk by chunk.
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
        self._http = httpx.AsyncClient(**self._http_kwargs(api=True))
        self._downloads = httpx.AsyncClient(**self._http_kwargs(api=False))

    async def aclose(self) -> None:
        """Close the connections (the client cannot be used afterwards)."""
        await self._http.aclose()
        await self._downloads.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def _sleep(self, seconds: float) -> None:
        # (one place to wait: tests replace it to record backoffs instead of waiting for them)
        await asyncio.sleep(seconds)

    # -- the API ----------------------------------------------------------------------------------------

    async def submit(
        self, request: PipelineRequest | Mapping[str, Any], *, idempotency_key: str | None = None
    ) -> Pipeline:
        """``POST /v1/pipeline``; see :meth:`leapi.Client.submit`."""
        body, headers = self._submit_parts(request, idempotency_key)
        response = await self._request("POST", PIPELINE_PATH, json=body, headers=headers, submit=True)
        return accepted_pipeline(response)

    async def get_pipeline(self, pipeline_id: int) -> Pipeline:
        """``GET /v1/pipeline/{id}``; see :meth:`leapi.Client.get_pipeline`."""
        return pipeline_of(await self._request("GET", f"{PIPELINE_PATH}/{int(pipeline_id)}"))

    async def get_usage(self) -> Usage:
        """``GET /v1/me/usage/``: credits used and left this month."""
        return usage_of(await self._request("GET", USAGE_PATH))

    @overload
    async def wait(
        self,
        pipeline_ids: int,
        *,
        timeout: float | None = ...,
        poll_interval: float = ...,
        initial_poll_interval: float = ...,
        raise_on_error: bool = ...,
    ) -> Pipeline: ...

    @overload
    async def wait(
        self,
        pipeline_ids: Sequence[int],
        *,
        timeout: float | None = ...,
        poll_interval: float = ...,
        initial_poll_interval: float = ...,
        raise_on_error: bool = ...,
    ) -> list[Pipeline]: ...

    async def wait(
        self,
        pipeline_ids: int | Sequence[int],
        *,
        timeout: float | None = DEFAULT_WAIT_TIMEOUT_S,
        poll_interval: float = DEFAULT_POLL_INTERVAL_S,
        initial_poll_interval: float = DEFAULT_INITIAL_POLL_INTERVAL_S,
        raise_on_error: bool = False,
    ) -> Pipeline | list[Pipeline]:
        """Poll until every pipeline is DONE or ERROR; see :meth:`leapi.Client.wait` (the same reads, in
        submission order: one after another, since each answer decides whether the round goes on)."""
        state = WaitState(
            pipeline_ids_of(pipeline_ids),
            timeout=timeout,
            poll_interval=poll_interval,
            initial_poll_interval=initial_poll_interval,
        )
        while True:
            for pipeline_id in state.round():
                state.record(await self.get_pipeline(pipeline_id))
            gap = state.next_gap()
            if gap is None:
                break
            running, total = len(state.pending), len(state.pipeline_ids)
            log.info("LEAPI: %d of %d pipeline(s) still running; next poll in %.1fs", running, total, gap)
            await self._sleep(gap)
        pipelines = state.results(raise_on_error=raise_on_error)
        return pipelines[0] if isinstance(pipeline_ids, int) else pipelines

    async def download(
        self, url: str, destination: Destination, *, chunk_size: int = DOWNLOAD_CHUNK_BYTES
    ) -> DownloadedResult:
        """Stream ``url`` to a path or binary stream; see :meth:`leapi.Client.download`."""
        with DownloadTarget(destination) as target:
            downloaded = await self._stream(url, target, chunk_size)
            target.commit()
        return downloaded

    async def download_result(
        self,
        result: ResultFile,
        destination: Destination,
        *,
        inspect: ImageInspector | None = None,
        chunk_size: int = DOWNLOAD_CHUNK_BYTES,
    ) -> VerifiedResult:
        """Download one result and verify it; see :meth:`leapi.Client.download_result`."""
        if result.is_expired():
            raise result.expired_error("it was not fetched")
        with DownloadTarget(destination) as target:
            try:
                downloaded = await self._stream(result.tmp_url, target, chunk_size)
            except LeapiHTTPError as exc:
                if exc.status_code in EXPIRED_STATUSES:
                    raise result.expired_error(f"the URL answered HTTP {exc.status_code}") from exc
                raise
            verified = verify_result(result, target, downloaded, inspect)
            target.commit()
        return verified

    # -- transport --------------------------------------------------------------------------------------

    async def _request(
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
                await self._sleep(wait)
            try:
                response = await self._http.request(method, path, json=json, headers=attempts.headers)
            except httpx.TransportError as exc:
                outcome = attempts.after_transport_error(exc)
            else:
                outcome = attempts.after_response(response)
                self._settle(booking, outcome)
                if outcome.verdict is Verdict.OK:
                    return response
            if attempts.should_probe(outcome):
                await self._probe_idempotency_support()
            delay = attempts.next_delay(outcome)
            self._settle(None, outcome, delay)
            await self._sleep(delay)

    async def _probe_idempotency_support(self) -> None:
        try:
            await self._request("GET", USAGE_PATH)  # every answer notes what it advertises
        except LeapiError as exc:
            log.warning("Could not learn whether LEAPI supports idempotent submits: %s", exc)

    async def _stream(self, url: str, target: DownloadTarget, chunk_size: int) -> DownloadedResult:
        attempt = 0
        while True:
            target.restart()
            try:
                async with self._downloads.stream("GET", url) as response:
                    if response.status_code >= 400:
                        await response.aread()
                    outcome = judge_download_answer(response)
                    if outcome is None:
                        async for chunk in response.aiter_bytes(chunk_size):
                            target.write(chunk)
                        return target.finish(response)
            except TRANSIENT_ERRORS as exc:
                outcome = Outcome(Verdict.RETRY, f"{type(exc).__name__}: {exc}")
            except httpx.HTTPError as exc:
                raise download_error(url, exc) from exc
            policy = self.retry_policy
            await self._sleep(
                next_download_delay(outcome, target=target, attempt=attempt, policy=policy, url=url)
            )
            attempt += 1
