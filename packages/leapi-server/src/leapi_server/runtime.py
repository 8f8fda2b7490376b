"""Everything a running ``leapi-server`` holds (store, temp store, dispatcher, webhook sender, keys, rate
limiter) and the operations the routes call. This is where the rules live; the answers are domain
outcomes (``leapi_server.outcomes``), which the API layer turns into HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import mimetypes
import re
import secrets
from typing import Any

from leapi.models import PipelineRequest
from leapi.webhooks import generate_secret
from leapi_server.access import KeyRing, RateLimiter
from leapi_server.clock import SYSTEM_CLOCK, Clock, month_period
from leapi_server.config import ServerConfig
from leapi_server.datadir import load_or_create_secret
from leapi_server.dispatcher import Dispatcher
from leapi_server.netguard import AddressPolicy, check_http_url
from leapi_server.outcomes import (
    Accepted,
    IdempotencyConflict,
    NotFound,
    QuotaExceeded,
    RateLimited,
    Rejected,
    RejectionKind,
    TempFile,
)
from leapi_server.store import PipelineRow, Store, TaskRow, open_database
from leapi_server.tempstore import FILE_SCHEME, FileTempStore, TempStore, TempUrlError
from leapi_server.views import (
    docs_only_usage,
    iso,
    render_accepted,
    render_deliveries,
    render_pipeline,
)
from leapi_server.webhook_sender import WebhookSender

log = logging.getLogger("leapi_server")

_PIPELINE_ID_RE = re.compile(r"^[0-9]{1,18}$")


class Runtime:
    """The server's state and operations. Blocking operations are called from threads.

    :param config: the server's configuration.
    :param clock: the one source of "now" for stamps, expiry, quotas, rate limits and webhook retries.
    """

    def __init__(self, *, config: ServerConfig, clock: Clock = SYSTEM_CLOCK) -> None:
        self.config = config
        self.clock = clock
        self.boot_id = secrets.token_hex(8)
        self.keys = KeyRing(keys=config.api_keys)
        self.limiter = RateLimiter(
            per_minute=config.rate_limit_per_minute, clock=clock, count_refused=config.docs_only
        )
        self.address_policy = AddressPolicy(
            allow_private=config.allow_private_sources, allowed_networks=config.allowed_source_networks
        )
        self.store = Store(
            database=open_database(config.store_url, pool_size=config.db_pool_size), clock=clock
        )
        self.temp_store = _temp_store(config, clock)
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
            config=config,
            store=self.store,
            secret=self.webhook_secret,
            render_body=self.webhook_body,
            clock=clock,
            boot_id=self.boot_id,
        )
        self._background: list[asyncio.Task[None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._collect_now = asyncio.Event()

    # -- lifecycle ------------------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        # Alone on its database (SQLite, data dir locked), every RUNNING lease is a dead boot's; with
        # replicas, only expired ones are (the dispatcher takes the others back as they expire).
        requeued = await asyncio.to_thread(
            self.store.tasks.recover,
            max_attempts=self.config.max_task_attempts,
            all_running=self.store.database.exclusive,
        )
        orphans = await asyncio.to_thread(self.temp_store.remove_orphans, self.store.tasks.live_output_keys())
        if requeued or orphans:
            log.info("recovered %d interrupted task(s), removed %d orphaned temp file(s)", requeued, orphans)
        self.dispatcher.start()
        self._background = [
            asyncio.create_task(self.dispatcher.run(), name="dispatcher"),
            asyncio.create_task(self.dispatcher.watch_engine_time(), name="engine-time-limit"),
            asyncio.create_task(self.dispatcher.keep_leases(), name="leases"),
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
        await asyncio.to_thread(self.store.close)

    def wake(self) -> None:
        """Re-check everything time-driven now (queued tasks, due webhooks, expired files) instead of at
        the next poll, e.g. after the clock was moved. Safe to call from any thread."""
        if self._loop is None:
            return
        for wake in (self.dispatcher.wake, self.webhooks.wake, self._collect_now.set):
            self._loop.call_soon_threadsafe(wake)

    def _pipeline_finished(self, pipeline_id: int) -> None:
        self.webhooks.wake()

    async def _collect_garbage_forever(self) -> None:
        while True:
            self._collect_now.clear()  # before the pass: a wake() during it asks for another one
            try:
                await asyncio.to_thread(self.collect_garbage)
            except Exception:
                log.exception("temp store garbage collection failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._collect_now.wait(), timeout=self.config.gc_interval_s)

    def collect_garbage(self) -> int:
        """Delete output files whose temp URL expired; forget old idempotency keys. Blocking."""
        expired = self.store.tasks.expired_outputs()
        for _pipeline_id, _index, key in expired:
            self.temp_store.remove(key)
        if expired:
            self.store.tasks.mark_collected([(p, i) for p, i, _ in expired])
            log.info("removed %d expired temp file(s)", len(expired))
        self.store.pipelines.forget_idempotency_keys(ttl_s=self.config.idempotency_ttl_s)
        strays = self.temp_store.remove_strays(self.store.tasks.live_output_keys())
        if strays:
            log.info("removed %d stray output(s) no task references", strays)
        return len(expired)

    # -- operations the routes call -------------------------------------------------------------------

    def rate_limit(self, owner: str) -> RateLimited | None:
        """Count one submit of ``owner``; a refusal when it is over the limit."""
        return self.limiter.hit(owner)

    def submit(
        self, *, owner: str, request: PipelineRequest, idempotency_key: str | None
    ) -> Accepted | Rejected | QuotaExceeded | IdempotencyConflict:
        """Accept (and charge) or refuse a validated request. Blocking: call from a thread.

        :param owner: the account (from the API key).
        :param request: the request, valid against the wire contract.
        :param idempotency_key: the client's Idempotency-Key header, already checked for its syntax.
        """
        problem = self._request_problem(request)
        if problem:
            return Rejected(reason=problem)
        urls = request.urls
        wire = request.model_dump(mode="json", by_alias=True)
        # Emit each operation in its documented form (unset optional fields left out, as sent).
        wire["operations"] = [op.to_wire() for op in request.operations]
        wire["source"] = {"http": {"url": urls}}
        # The same request in other JSON spelling (key order, url as string or list) is the same request.
        body_hash = hashlib.sha256(json.dumps(wire, sort_keys=True).encode()).hexdigest()
        result = self.store.pipelines.accept(
            owner=owner,
            request=wire,
            urls=urls,
            notify_url=request.notify_url,
            quota=self.config.monthly_quota,
            idempotency_key=idempotency_key,
            body_hash=body_hash,
            idempotency_ttl_s=self.config.idempotency_ttl_s,
        )
        if isinstance(result, QuotaExceeded | IdempotencyConflict):
            return result
        loaded = self.store.pipelines.get(result.pipeline_id)
        assert loaded is not None
        row, tasks = loaded
        return Accepted(body=render_accepted(row, [t.url for t in tasks]), replayed=result.replayed)

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

    def _owned_pipeline(self, owner: str, pipeline_id: str) -> tuple[PipelineRow, list[TaskRow]] | NotFound:
        not_found = NotFound(reason=f"pipeline {pipeline_id} not found")
        if not _PIPELINE_ID_RE.match(pipeline_id):  # not str.isdigit: that accepts "4²", which int() refuses
            return not_found
        loaded = self.store.pipelines.get(int(pipeline_id))
        if loaded is None or not hmac.compare_digest(loaded[0].owner, owner):
            return not_found
        return loaded

    def pipeline(self, *, owner: str, pipeline_id: str, base_url: str) -> dict[str, Any] | NotFound:
        """The documented pipeline object; NotFound for an unknown id or another key's pipeline. Blocking.

        :param pipeline_id: as written in the request path.
        :param base_url: where the client reached this server (base of ``tmp_url`` without --public-url).
        """
        loaded = self._owned_pipeline(owner, pipeline_id)
        if isinstance(loaded, NotFound):
            return loaded
        row, tasks = loaded
        return render_pipeline(
            row,
            tasks,
            temp_store=self.temp_store,
            base_url=self.config.public_url or base_url,
            result_errors=not self.config.docs_only,
        )

    def webhook_deliveries(self, *, owner: str, pipeline_id: str) -> list[dict[str, Any]] | NotFound:
        """Extension: the pipeline's webhook deliveries with every attempt. Blocking."""
        loaded = self._owned_pipeline(owner, pipeline_id)
        if isinstance(loaded, NotFound):
            return loaded
        return render_deliveries(self.store.webhooks.for_pipeline(loaded[0].id))

    def webhook_body(self, pipeline_id: int) -> dict[str, Any]:
        """What a finished pipeline's webhook POSTs: ``{"id", "status", "pipeline"}``. Blocking."""
        loaded = self.store.pipelines.get(pipeline_id)
        assert loaded is not None
        row, tasks = loaded
        pipeline = render_pipeline(
            row,
            tasks,
            temp_store=self.temp_store,
            base_url=self.config.base_url,
            result_errors=not self.config.docs_only,
        )
        return {"id": row.id, "status": row.status.value, "pipeline": pipeline}

    def usage(self, *, owner: str) -> dict[str, Any]:
        """Credits used this calendar month (UTC), the quota and the rate limit. Blocking."""
        period, start, end = month_period(self.clock())
        used = self.store.pipelines.used_credits(owner, period)
        quota = self.config.monthly_quota or None
        if self.config.docs_only:
            return docs_only_usage(used=used, quota=quota, start=start, end=end, config=self.config)
        return {
            "used": used,
            "quota": quota,
            "remaining": None if quota is None else max(quota - used, 0),
            "period_start": iso(start),
            "period_end": iso(end),
            "rate_limit_per_minute": self.config.rate_limit_per_minute or None,
        }

    def temp_file(
        self, *, key: str, expires: str | None, signature: str | None
    ) -> TempFile | Rejected | NotFound:
        """The output file behind a signed temp URL; Rejected when the URL is tampered with, expired or
        malformed, NotFound when its file is gone."""
        try:
            path = self.temp_store.resolve(key, expires, signature)
        except TempUrlError as exc:
            return Rejected(reason=str(exc), kind=RejectionKind.TEMP_URL_REFUSED)
        if not path.is_file():
            return NotFound(reason="the temporary file no longer exists")
        return TempFile(
            path=path,
            media_type=mimetypes.guess_type(path.name)[0] or "application/octet-stream",
            max_age_s=max(0, int(expires or 0) - int(self.clock())),
        )


def _temp_store(config: ServerConfig, clock: Clock) -> TempStore:
    """The ``--temp-store`` of ``config``; workers write into ``<data-dir>/tmp`` either way."""
    if config.temp_store == FILE_SCHEME:
        return FileTempStore(
            root=config.temp_dir,
            secret=load_or_create_secret(config.data_dir / "url-signing-key"),
            clock=clock,
        )
    # Imported here: boto3 is the optional ``s3`` extra.
    from leapi_server.tempstore_s3 import S3TempStore

    return S3TempStore(spec=config.temp_store, scratch=config.temp_dir, clock=clock)
