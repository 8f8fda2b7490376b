"""Everything a running ``leapi-server`` holds: store, temp store, dispatcher, webhook sender, limiter,
and the submit/read operations the routes call. Routes stay thin; this is where the rules live.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import fcntl
import hashlib
import hmac
import json
import logging
import math
import secrets
import threading
import time
from dataclasses import dataclass
from typing import IO, Any

from leapi.models import PipelineRequest
from leapi.webhooks import generate_secret
from leapi_server.config import ServerConfig
from leapi_server.dispatcher import Dispatcher
from leapi_server.netguard import AddressPolicy, check_http_url
from leapi_server.store import Accepted, IdempotencyConflict, QuotaExceeded, Store
from leapi_server.tempstore import TempStore, load_or_create_secret
from leapi_server.views import iso, month_period, render_accepted, render_pipeline
from leapi_server.webhook_sender import WebhookSender

log = logging.getLogger("leapi_server")


class DataDirInUseError(RuntimeError):
    pass


def lock_data_dir(config: ServerConfig) -> IO[str]:
    """One server per data dir: its RUNNING task leases are then known to be stale at start."""
    config.data_dir.mkdir(parents=True, exist_ok=True)
    handle = open(config.data_dir / ".lock", "a+")  # noqa: SIM115 - held for the process lifetime
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise DataDirInUseError(f"{config.data_dir} is used by another running leapi-server") from None
    return handle


class KeyRing:
    """The accepted API keys. Lookups compare against every key in constant time; the store only ever
    sees an owner id derived from the key (its SHA-256), never the key."""

    def __init__(self, keys: tuple[str, ...]) -> None:
        self._keys = [(k.encode(), hashlib.sha256(k.encode()).hexdigest()) for k in keys]

    def owner_of(self, presented: str | None) -> str | None:
        if not presented:
            return None
        candidate = presented.encode()
        owner = None
        for key, key_owner in self._keys:  # no early exit: the time taken does not depend on which key
            if hmac.compare_digest(candidate, key):
                owner = key_owner
        return owner


class RateLimiter:
    """Sliding one-minute window per owner over POST /v1/pipeline requests (in memory)."""

    def __init__(self, per_minute: int, window_s: float = 60.0) -> None:
        self.per_minute = per_minute
        self.window_s = window_s
        self._hits: dict[str, collections.deque[float]] = collections.defaultdict(collections.deque)
        self._lock = threading.Lock()

    def hit(self, owner: str, now: float | None = None) -> int | None:
        """Count a request; ``None`` if allowed, else the seconds until one more would be."""
        if not self.per_minute:
            return None
        now = time.monotonic() if now is None else now
        with self._lock:
            hits = self._hits[owner]
            while hits and hits[0] <= now - self.window_s:
                hits.popleft()
            if len(hits) >= self.per_minute:
                return max(1, math.ceil(hits[0] + self.window_s - now))
            hits.append(now)
            return None


@dataclass(frozen=True)
class SubmitOutcome:
    """What the submit route answers: an HTTP status, a JSON body and extra headers."""

    status_code: int
    body: dict[str, Any]
    headers: dict[str, str]


def rejected(reason: str) -> dict[str, str]:
    return {"status": "REJECTED", "reason": reason}


class Runtime:
    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.boot_id = secrets.token_hex(8)
        self.keys = KeyRing(config.api_keys)
        self.limiter = RateLimiter(config.rate_limit_per_minute)
        self.address_policy = AddressPolicy(
            allow_private=config.allow_private_sources, allowed_networks=config.allowed_source_networks
        )
        self.store = Store(config.db_path)
        self.temp_store = TempStore(
            config.temp_dir, load_or_create_secret(config.data_dir / "url-signing-key")
        )
        self.webhook_secret = config.webhook_secret or load_or_create_secret(
            config.data_dir / "webhook-secret", generate=generate_secret
        )
        self.dispatcher = Dispatcher(
            config=config,
            store=self.store,
            temp_store=self.temp_store,
            boot_id=self.boot_id,
            on_pipeline_finished=self._pipeline_finished,
        )
        self.webhooks = WebhookSender(
            config=config, store=self.store, secret=self.webhook_secret, render_body=self.webhook_body
        )
        self._background: list[asyncio.Task[None]] = []

    # -- lifecycle ------------------------------------------------------------------------------------

    async def start(self) -> None:
        requeued = await asyncio.to_thread(
            self.store.recover, max_attempts=self.config.max_task_attempts, now=time.time()
        )
        orphans = await asyncio.to_thread(self.temp_store.remove_orphans, self.store.live_output_keys())
        if requeued or orphans:
            log.info("recovered %d interrupted task(s), removed %d orphaned temp file(s)", requeued, orphans)
        self.dispatcher.start()
        self._background = [
            asyncio.create_task(self.dispatcher.run(), name="dispatcher"),
            asyncio.create_task(self.dispatcher.watch_engine_time(), name="engine-time-limit"),
            asyncio.create_task(self.webhooks.run(), name="webhooks"),
            asyncio.create_task(self._collect_garbage_forever(), name="gc"),
        ]

    async def stop(self) -> None:
        for task in self._background:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*self._background, return_exceptions=True)
        await self.dispatcher.stop()
        await self.webhooks.stop()

    def _pipeline_finished(self, pipeline_id: int) -> None:
        self.webhooks.wake()

    async def _collect_garbage_forever(self) -> None:
        while True:
            try:
                await asyncio.to_thread(self.collect_garbage)
            except Exception:
                log.exception("temp store garbage collection failed")
            await asyncio.sleep(self.config.gc_interval_s)

    def collect_garbage(self) -> int:
        """Delete output files whose temp URL expired; forget old idempotency keys."""
        now = time.time()
        expired = self.store.expired_outputs(now=now)
        for _pipeline_id, _index, key in expired:
            self.temp_store.remove(key)
        if expired:
            self.store.mark_collected([(p, i) for p, i, _ in expired])
            log.info("removed %d expired temp file(s)", len(expired))
        self.store.forget_idempotency_keys(older_than=now - self.config.idempotency_ttl_s)
        return len(expired)

    # -- operations the routes call -------------------------------------------------------------------

    def submit(self, *, owner: str, request: PipelineRequest, idempotency_key: str | None) -> SubmitOutcome:
        """Accept (and charge) or refuse a validated request. Blocking: call from a thread."""
        urls = request.urls
        problem = self._request_problem(request)
        if problem:
            return SubmitOutcome(400, rejected(problem), {})
        now = time.time()
        period, _start, period_end = month_period(now)
        wire = request.model_dump(mode="json", by_alias=True)
        # Emit each operation in its documented form (unset optional fields left out, as sent).
        wire["operations"] = [op.to_wire() for op in request.operations]
        wire["source"] = {"http": {"url": urls}}
        # The same request in other JSON spelling (key order, url as string or list) is the same request.
        body_hash = hashlib.sha256(json.dumps(wire, sort_keys=True).encode()).hexdigest()
        result = self.store.accept_pipeline(
            owner=owner,
            request=wire,
            urls=urls,
            notify_url=request.notify_url,
            period=period,
            quota=self.config.monthly_quota,
            now=now,
            idempotency_key=idempotency_key,
            body_hash=body_hash,
            idempotency_ttl_s=self.config.idempotency_ttl_s,
        )
        if isinstance(result, QuotaExceeded):
            remaining = max(result.quota - result.used, 0)
            return SubmitOutcome(
                402,
                rejected(
                    f"Monthly quota exceeded: this request needs {result.requested} credit(s), "
                    f"{remaining} of {result.quota} remain until {_utc(period_end)}."
                ),
                {},
            )
        if isinstance(result, IdempotencyConflict):
            return SubmitOutcome(
                422,
                rejected(
                    f"Idempotency-Key {idempotency_key!r} was already used for pipeline {result.pipeline_id} "
                    "with a different request body; use a new key for a new request."
                ),
                {},
            )
        assert isinstance(result, Accepted)
        loaded = self.store.get_pipeline(result.pipeline_id)
        assert loaded is not None
        row, tasks = loaded
        headers = {"Idempotent-Replayed": "true"} if result.replayed else {}
        return SubmitOutcome(200, render_accepted(row, [t.url for t in tasks]), headers)

    def _request_problem(self, request: PipelineRequest) -> str:
        """Checks beyond the wire model: server limits and the SSRF policy on literal addresses."""
        urls = request.urls
        if len(urls) > self.config.max_urls_per_pipeline:
            return (
                f"source.http.url: at most {self.config.max_urls_per_pipeline} URLs per pipeline on this server, "
                f"got {len(urls)}; split the request"
            )
        for index, url in enumerate(urls):
            problem = check_http_url(url, self.address_policy)
            if problem:
                return f"source.http.url.{index}: {problem}"
        if request.notify_url is not None:
            problem = check_http_url(request.notify_url, self.address_policy)
            if problem:
                return f"notify_url: {problem}"
        if not request.sink.temp_store:
            return "sink.temp_store: must be true: temp_store is the only sink this server offers"
        for index, op in enumerate(request.operations):
            if op.width and op.height and op.width * op.height > self.config.max_output_pixels:
                return (
                    f"operations.{index}.width: the {op.width}x{op.height} box is "
                    f"{op.width * op.height / 1e6:.1f} MP, over this server's limit of "
                    f"{self.config.max_output_pixels / 1e6:.1f} MP"
                )
        return ""

    def pipeline(self, *, owner: str, pipeline_id: int, base_url: str) -> dict[str, Any] | None:
        """The pipeline object, or None when it does not exist or belongs to another key. Blocking."""
        loaded = self.store.get_pipeline(pipeline_id)
        if loaded is None or not hmac.compare_digest(loaded[0].owner, owner):
            return None
        row, tasks = loaded
        return render_pipeline(
            row, tasks, temp_store=self.temp_store, base_url=self.config.public_url or base_url
        )

    def webhook_body(self, pipeline_id: int) -> dict[str, Any]:
        loaded = self.store.get_pipeline(pipeline_id)
        assert loaded is not None
        row, tasks = loaded
        pipeline = render_pipeline(row, tasks, temp_store=self.temp_store, base_url=self.config.base_url)
        return {"id": row.id, "status": row.status, "pipeline": pipeline}

    def usage(self, *, owner: str) -> dict[str, Any]:
        now = time.time()
        period, start, end = month_period(now)
        used = self.store.used_credits(owner, period)
        quota = self.config.monthly_quota or None
        return {
            "used": used,
            "quota": quota,
            "remaining": None if quota is None else max(quota - used, 0),
            "period_start": iso(start),
            "period_end": iso(end),
            "rate_limit_per_minute": self.config.rate_limit_per_minute or None,
        }

    def webhook_deliveries(self, *, owner: str, pipeline_id: int) -> list[dict[str, Any]] | None:
        loaded = self.store.get_pipeline(pipeline_id)
        if loaded is None or not hmac.compare_digest(loaded[0].owner, owner):
            return None
        return [
            {
                "id": d.id,
                "url": d.url,
                "state": d.state,
                "next_attempt_at": iso(d.next_attempt_at),
                "attempts": [
                    {
                        "attempt": a.attempt,
                        "started_at": iso(a.started_at),
                        "duration_s": round(a.duration_s, 4),
                        "status_code": a.status_code,
                        "error": a.error,
                    }
                    for a in d.attempts
                ],
            }
            for d in self.store.deliveries_for(pipeline_id)
        ]


def _utc(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))
