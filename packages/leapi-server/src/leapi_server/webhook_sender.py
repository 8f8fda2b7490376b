"""Webhook delivery: POST ``{"id", "status", "pipeline"}`` to ``notify_url`` when a pipeline finishes.

Deliveries are rows in the store, created in the transaction that finishes the pipeline, so a crash
loses none. Each is tried once, then after each of ``--webhook-retry-delays`` (docs: 3, 6, 10 minutes)
when the receiver fails (network error or HTTP status >= 400), then abandoned; every attempt is recorded.
Bodies are frozen at the first attempt (retries send the same bytes) and signed Standard Webhooks style
(``leapi.webhooks``). Redirects are not followed; targets pass the same SSRF policy as sources.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpcore

from leapi.webhooks import signed_headers
from leapi_server.clock import SYSTEM_CLOCK, Clock
from leapi_server.config import ServerConfig
from leapi_server.netguard import AddressPolicy, BlockedAddressError, GuardedAsyncBackend
from leapi_server.store import Delivery, Store

log = logging.getLogger("leapi_server.webhooks")

_MAX_CONCURRENT = 16
_IDLE_POLL_S = 5.0
USER_AGENT = "leapi-server-webhooks"


@dataclass(frozen=True, kw_only=True)
class _Response:
    """How one attempt went: ``error`` None means acknowledged."""

    status_code: int | None = None
    error: str | None = None
    #: The target can never accept it (refused address, unsupported URL): no retry.
    permanent: bool = False


class WebhookSender:
    """Background loop sending due deliveries.

    :param config: retry delays, timeout and the SSRF policy of webhook targets.
    :param store: the deliveries and their attempts.
    :param secret: the HMAC secret of the signatures.
    :param render_body: pipeline id -> JSON-able webhook body (called once per delivery).
    :param clock: when attempts happen and retries are due.
    :param boot_id: this server run: the owner of the deliveries it claims (one replica per attempt).
    """

    def __init__(
        self,
        *,
        config: ServerConfig,
        store: Store,
        secret: str,
        render_body: Callable[[int], dict[str, Any]],
        clock: Clock = SYSTEM_CLOCK,
        boot_id: str = "",
    ) -> None:
        self.config = config
        self.boot_id = boot_id
        self.store = store
        self.secret = secret
        self.render_body = render_body
        self._clock = clock
        self._pool = httpcore.AsyncConnectionPool(
            network_backend=GuardedAsyncBackend(
                AddressPolicy(
                    allow_private=config.allow_private_sources,
                    allowed_networks=config.allowed_source_networks,
                )
            ),
            max_connections=_MAX_CONCURRENT,
        )
        self._wake = asyncio.Event()
        self._inflight: dict[str, asyncio.Task[None]] = {}
        self._stopping = False

    def wake(self) -> None:
        self._wake.set()

    async def stop(self) -> None:
        self._stopping = True
        for task in list(self._inflight.values()):
            task.cancel()
        await asyncio.gather(*self._inflight.values(), return_exceptions=True)
        await self._pool.aclose()

    async def run(self) -> None:
        while not self._stopping:
            self._wake.clear()
            timeout = _IDLE_POLL_S
            try:
                room = _MAX_CONCURRENT - len(self._inflight)
                # Taken before the query: a delivery in flight now may record its attempt and leave
                # _inflight while we wait, and the row we read for it is then stale (a second attempt
                # would go out at once instead of after its delay).
                busy_at_query = set(self._inflight)
                due = await asyncio.to_thread(
                    self.store.webhooks.due,
                    limit=room,
                    boot_id=self.boot_id,
                    # Longer than one attempt: the claim must outlive the POST it covers.
                    claim_s=self.config.webhook_timeout_s * 4 + 30,
                )
                for delivery in due:
                    if delivery.id in busy_at_query or delivery.id in self._inflight or room <= 0:
                        continue
                    room -= 1
                    self._inflight[delivery.id] = asyncio.create_task(self._attempt(delivery))
                next_at = await asyncio.to_thread(self.store.webhooks.next_attempt_at)
                if next_at is not None:
                    timeout = min(max(next_at - self._clock(), 0.2), _IDLE_POLL_S)
            except Exception:
                log.exception("webhook loop error")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=timeout)

    async def _attempt(self, delivery: Delivery) -> None:
        try:
            body = delivery.body
            if body is None:
                rendered = await asyncio.to_thread(self.render_body, delivery.pipeline_id)
                body = json.dumps(rendered, separators=(",", ":")).encode()
                body = await asyncio.to_thread(self.store.webhooks.freeze_body, delivery.id, body)
            started_at = self._clock()
            # The duration is measured, not read off the (possibly injected) clock.
            started = time.monotonic()
            response = await self._post(delivery, body)
            duration = time.monotonic() - started
            attempt_no = delivery.attempts + 1
            delays = self.config.webhook_retry_delays_s
            retry_at = None
            if response.error is not None and not response.permanent and attempt_no <= len(delays):
                # The docs count each delay from the attempt that was not acknowledged, i.e. from its end.
                retry_at = self._clock() + delays[attempt_no - 1]
            await asyncio.to_thread(
                self.store.webhooks.record_attempt,
                delivery_id=delivery.id,
                started_at=started_at,
                duration_s=duration,
                status_code=response.status_code,
                error=response.error,
                delivered=response.error is None,
                retry_at=retry_at,
                boot_id=self.boot_id,
            )
            self._log_attempt(delivery, attempt_no, response, retry_at)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("webhook %s attempt crashed", delivery.id)
            await asyncio.sleep(1.0)
        finally:
            self._inflight.pop(delivery.id, None)
            self._wake.set()

    async def _post(self, delivery: Delivery, body: bytes) -> _Response:
        """One signed POST of ``body`` to the delivery's URL."""
        # signed_headers stamps the real time: the receiver checks it against its own clock.
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            **signed_headers(self.secret, delivery.id, body),
        }
        t = self.config.webhook_timeout_s
        try:
            # Streamed and not read: only the status matters, and a receiver can't make us buffer.
            async with self._pool.stream(
                "POST",
                delivery.url,
                headers=list(headers.items()),
                content=body,
                extensions={"timeout": {"connect": t, "read": t, "write": t, "pool": t}},
            ) as response:
                status_code = response.status
        except BlockedAddressError as exc:
            return _Response(error=f"refused: {exc}", permanent=True)
        except (httpcore.TimeoutException, httpcore.NetworkError, httpcore.ProtocolError) as exc:
            return _Response(error=f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
        except httpcore.UnsupportedProtocol as exc:
            return _Response(error=f"unsupported URL: {exc}", permanent=True)
        if status_code >= 400:
            return _Response(status_code=status_code, error=f"receiver answered HTTP {status_code}")
        return _Response(status_code=status_code)

    def _log_attempt(
        self, delivery: Delivery, attempt_no: int, response: _Response, retry_at: float | None
    ) -> None:
        if response.error is None:
            log.info(
                "webhook %s for pipeline %s delivered (attempt %s)",
                delivery.id,
                delivery.pipeline_id,
                attempt_no,
            )
        elif retry_at is None:
            log.warning(
                "webhook %s for pipeline %s abandoned after attempt %s: %s",
                delivery.id,
                delivery.pipeline_id,
                attempt_no,
                response.error,
            )
        else:
            log.info(
                "webhook %s for pipeline %s attempt %s failed (%s); retry in %.0f s",
                delivery.id,
                delivery.pipeline_id,
                attempt_no,
                response.error,
                retry_at - self._clock(),
            )
