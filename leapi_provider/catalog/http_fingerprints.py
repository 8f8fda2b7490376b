"""Change detection over HTTP(S): one ``HEAD`` per distinct source, concurrently, a few at a time per host.

Sources are grouped by origin (scheme, host, port) into lanes. Each lane runs at most ``per_host`` requests
at once over as many keep-alive connections (:class:`~leapi_provider.catalog.http_head.HeadConnection`), and
all lanes together at most ``max_connections``, so a catalog on one CDN is read as fast as a polite client
may, and a slow or failing host only ever holds its own ``per_host`` slots while the other hosts go on.

Politeness and retries:

* ``429`` and ``503`` pause the whole host for its ``Retry-After`` (capped at ``max_retry_after``), else for
  an exponential backoff with jitter; a source is asked at most ``rate_limited_attempts`` times.
* Transport failures (refused or dropped connections, timeouts) pause the host too; after
  ``host_failure_limit`` of them in a row the host is given up and its remaining sources are left without
  a fingerprint (they are re-enhanced, as any unreadable source is).
* ``408``, ``500``, ``502`` and ``504`` retry that source alone, after a backoff, ``max_attempts`` times in all.
* No retry starts later than ``retry_budget`` seconds after detection began: past it, a failure is final
  and a host that still refuses is given up.
* ``404`` and ``410`` mean the source is gone; redirects are followed (at most :data:`MAX_REDIRECTS`).
* Other answers (``403`` from a URL presigned for ``GET`` only, ``405``, a ``2xx`` without ``ETag`` or
  ``Last-Modified``) fall back to hashing a ``GET``, as does ``change_detection="content"``; those go
  through httpx, as do sources behind an environment proxy or with credentials in the URL.
"""

from __future__ import annotations

import asyncio
import hashlib
import heapq
import itertools
import logging
import re
import time
import urllib.request
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx

from leapi.transport import RetryPolicy, retry_after_seconds, shared_tls_context
from leapi_provider.catalog.fingerprint_model import (
    DetectionStats,
    SourceFingerprint,
    content_fingerprint,
    http_status_failure,
    http_validator_fingerprint,
)
from leapi_provider.catalog.http_head import HeadAnswer, HeadConnection, HeadProtocolError, SourceConnectError
from leapi_provider.catalog.settings import DEFAULT_CHANGE_DETECTION_PER_HOST
from leapi_provider.get_provider_info import PACKAGE_VERSION

log = logging.getLogger(__name__)

MAX_REDIRECTS = 5
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
#: The host asks to slow down: the whole host pauses.
RATE_LIMITED_STATUSES = frozenset({429, 503})
#: One source's request failed on the server's side: it alone is retried after a backoff.
TRANSIENT_STATUSES = frozenset({408, 500, 502, 504})
GONE_STATUSES = frozenset({404, 410})
_DEFAULT_PORTS = {"http": 80, "https": 443}
_AUTHORITY_END = re.compile(r"[/?#]")


@dataclass(frozen=True, kw_only=True)
class DetectionPolicy:
    """How hard change detection may press the source hosts (see the module docstring).

    :param per_host: requests (and connections) at once per host.
    :param max_connections: requests at once over all hosts.
    :param timeout: seconds to connect, and seconds for one answer.
    """

    per_host: int = DEFAULT_CHANGE_DETECTION_PER_HOST
    max_connections: int = 64
    timeout: float = 30.0
    max_attempts: int = 3
    rate_limited_attempts: int = 8
    backoff_base: float = 0.5
    backoff_max: float = 30.0
    max_retry_after: float = 120.0
    host_failure_limit: int = 8
    retry_budget: float = 600.0

    def __post_init__(self) -> None:
        if self.per_host < 1 or self.max_connections < 1:
            raise ValueError("per_host and max_connections must be at least 1")


class _Job:
    """A source past its first try: where it is now (after redirects) and what it has cost."""

    __slots__ = ("attempts", "current", "hops", "rate_limited", "url")

    def __init__(self, url: str) -> None:
        self.url = url
        self.current = url
        self.attempts = 1
        self.rate_limited = 0
        self.hops = 0


@dataclass(frozen=True, slots=True)
class _Retry:
    reason: str
    retry_after: float | None = None
    rate_limited: bool = False
    #: A transport failure: counts toward giving the host up.
    transport: bool = False


@dataclass(frozen=True, slots=True)
class _Redirect:
    location: str


_Outcome = SourceFingerprint | _Retry | _Redirect


class _Lane:
    """The sources of one origin, and how that host is doing."""

    __slots__ = ("delayed", "down", "failures", "head_args", "paused_until", "pending", "workers")

    def __init__(self, head_args: dict[str, Any] | None) -> None:
        #: :class:`HeadConnection` arguments; ``None``: this host is asked through httpx only.
        self.head_args = head_args
        self.pending: deque[str | _Job] = deque()
        #: ``(ready at, sequence, job)``: sources waiting out their own backoff.
        self.delayed: list[tuple[float, int, _Job]] = []
        self.paused_until = 0.0
        self.failures = 0
        self.down: str | None = None
        self.workers = 0


def request_target(url: str) -> str:
    """The path and query of ``url`` as sent in the request line (no fragment; at least ``/``)."""
    start = url.find("//") + 2
    ends = [i for i in (url.find("/", start), url.find("?", start), url.find("#", start)) if i >= 0]
    target = url[min(ends) :].partition("#")[0] if ends else ""
    if not target.startswith("/"):
        target = "/" + target
    return target


def _safe_target(target: str) -> bool:
    """Whether ``target`` can go on the request line as it is (printable ASCII, no space)."""
    return target.isascii() and target.isprintable() and " " not in target


def judge_head(answer: HeadAnswer) -> _Outcome | None:
    """What a ``HEAD`` answer says; ``None``: ask for the content (``GET``) instead."""
    status, headers = answer.status, answer.headers
    if status < 300:
        return http_validator_fingerprint(
            etag=headers.get("etag"),
            last_modified=headers.get("last-modified"),
            content_length=headers.get("content-length"),
        )
    if status in REDIRECT_STATUSES and headers.get("location"):
        return _Redirect(headers["location"])
    return _judge_failure(status, headers)


def _judge_failure(status: int, headers: dict[str, str] | Any) -> _Outcome | None:
    if status in GONE_STATUSES:
        return http_status_failure(status)
    if status in RATE_LIMITED_STATUSES:
        return _Retry(f"HTTP {status}", retry_after_seconds(_as_httpx_headers(headers)), rate_limited=True)
    if status in TRANSIENT_STATUSES:
        return _Retry(f"HTTP {status}")
    return None


def _as_httpx_headers(headers: Any) -> httpx.Headers:
    return headers if isinstance(headers, httpx.Headers) else httpx.Headers(headers)


class HttpDetector:
    """Fingerprints HTTP(S) sources under a :class:`DetectionPolicy`; one use per event loop run.

    :param mode: ``headers`` (``HEAD``, hashing a ``GET`` only without validators) or ``content`` (``GET``).
    """

    def __init__(self, *, policy: DetectionPolicy, mode: str, stats: DetectionStats) -> None:
        self.policy = policy
        self.mode = mode
        self.stats = stats
        self.found: dict[str, SourceFingerprint] = {}
        self.lanes: dict[tuple[str, str, int], _Lane] = {}
        #: The lane of each ``(scheme, authority)`` as written in the URLs (most URLs skip parsing).
        self._lane_of: dict[tuple[str, str], _Lane] = {}
        self._backoff = RetryPolicy(
            backoff_base=policy.backoff_base,
            backoff_max=policy.backoff_max,
            max_retry_after=policy.max_retry_after,
        )
        self._user_agent = f"airflow-provider-leapi/{PACKAGE_VERSION} (change detection)"
        self._proxies = urllib.request.getproxies()
        self._client: httpx.AsyncClient | None = None
        self._sequence = itertools.count()
        self._deadline = 0.0
        self._slots: asyncio.Semaphore | None = None
        self._tasks: asyncio.TaskGroup | None = None

    async def run(self, urls: Sequence[str]) -> dict[str, SourceFingerprint]:
        """Fingerprint each of ``urls`` (distinct); returns them all, readable or not."""
        self._deadline = time.monotonic() + self.policy.retry_budget
        self._slots = asyncio.Semaphore(self.policy.max_connections)
        for url in urls:
            self._route(url, url)
        try:
            async with asyncio.TaskGroup() as self._tasks:
                for lane in self.lanes.values():
                    self._staff(lane)
        finally:
            if self._client is not None:
                await self._client.aclose()
        self.stats.http_hosts = len(self.lanes)  # (redirect targets included)
        return self.found

    # -- routing --------------------------------------------------------------------------------------

    def _route(self, item: str | _Job, url: str) -> None:
        """Queue ``item`` (now at ``url``) in its host's lane, or settle it when ``url`` cannot be asked."""
        scheme, _, rest = url.partition("://")
        end = _AUTHORITY_END.search(rest)
        written = (scheme, rest[: end.start()] if end else rest)
        lane = self._lane_of.get(written)
        if lane is None:
            lane = self._new_lane(item, url)
            if lane is None:
                return
            self._lane_of[written] = lane
        lane.pending.append(item)
        if self._tasks is not None:
            self._staff(lane)

    def _new_lane(self, item: str | _Job, url: str) -> _Lane | None:
        """The lane of ``url``'s origin (made on first use); ``None`` (``item`` settled) for a bad URL."""
        try:
            parts = urlsplit(url)
            scheme, host = parts.scheme.lower(), parts.hostname or ""
            port = parts.port or _DEFAULT_PORTS.get(scheme, 0)
        except ValueError as exc:
            self._settle_error(item, f"invalid URL: {exc}")
            return None
        if scheme not in _DEFAULT_PORTS or not host:
            self._settle_error(item, f"not an http(s) URL: {url[:200]}")
            return None
        key = (scheme, host, port)
        if key not in self.lanes:
            self.lanes[key] = _Lane(self._head_args(scheme, host, port, parts.netloc))
        return self.lanes[key]

    def _head_args(self, scheme: str, host: str, port: int, netloc: str) -> dict[str, Any] | None:
        """The fast path's connection arguments for this origin, or ``None`` when httpx must ask it."""
        proxied = (self._proxies.get(scheme) or self._proxies.get("all")) and not urllib.request.proxy_bypass(
            host
        )
        if proxied or "@" in netloc or not host.isascii():
            return None
        authority = f"[{host}]" if ":" in host else host
        if port != _DEFAULT_PORTS[scheme]:
            authority = f"{authority}:{port}"
        return {
            "scheme": scheme,
            "host": host,
            "port": port,
            "host_header": authority,
            # (loading the CA bundle takes 0.2 s: only once an https source needs it)
            "tls": shared_tls_context() if scheme == "https" else None,
            "user_agent": self._user_agent,
            "timeout": self.policy.timeout,
        }

    def _staff(self, lane: _Lane) -> None:
        """Start workers for ``lane`` up to ``per_host`` (and no more than it has sources)."""
        assert self._tasks is not None
        wanted = min(self.policy.per_host, len(lane.pending) + len(lane.delayed))
        while lane.workers < wanted:
            lane.workers += 1
            self._tasks.create_task(self._work(lane))

    # -- workers --------------------------------------------------------------------------------------

    async def _work(self, lane: _Lane) -> None:
        assert self._slots is not None
        connection = HeadConnection(**lane.head_args) if lane.head_args and self.mode == "headers" else None
        try:
            while (item := await self._next(lane)) is not None:
                async with self._slots:
                    outcome = await self._attempt(connection, item)
                self._settle(lane, item, outcome)
        finally:
            lane.workers -= 1
            if connection is not None:
                connection.close()

    async def _next(self, lane: _Lane) -> str | _Job | None:
        """The lane's next source once the host may be asked again; ``None`` when the lane is done."""
        while True:
            if lane.down is not None:
                self._abandon(lane)
                return None
            now = time.monotonic()
            if lane.paused_until > now:
                await asyncio.sleep(lane.paused_until - now)
                continue
            while lane.delayed and lane.delayed[0][0] <= now:
                lane.pending.append(heapq.heappop(lane.delayed)[2])
            if lane.pending:
                return lane.pending.popleft()
            if not lane.delayed:
                return None
            await asyncio.sleep(lane.delayed[0][0] - now)

    async def _attempt(self, connection: HeadConnection | None, item: str | _Job) -> _Outcome:
        url = item if isinstance(item, str) else item.current
        try:
            if self.mode == "content":
                return await self._hash_content(url)
            target = request_target(url)
            self.stats.requests["HEAD"] += 1
            if connection is not None and _safe_target(target):
                answer = await connection.head(target)
            else:
                answer = await self._head_through_httpx(url)
            return judge_head(answer) or await self._hash_content(url)
        except SourceConnectError as exc:
            return _Retry(str(exc), transport=True)
        except (OSError, TimeoutError, EOFError, HeadProtocolError, httpx.TransportError) as exc:
            return _Retry(f"{type(exc).__name__}: {exc}", transport=True)

    def _httpx(self) -> httpx.AsyncClient:
        if self._client is None:
            limits = httpx.Limits(
                max_connections=self.policy.max_connections,
                max_keepalive_connections=self.policy.max_connections,
            )
            self._client = httpx.AsyncClient(
                timeout=self.policy.timeout,
                limits=limits,
                verify=shared_tls_context(),
                headers={"User-Agent": self._user_agent},
            )
        return self._client

    async def _head_through_httpx(self, url: str) -> HeadAnswer:
        response = await self._httpx().head(url, follow_redirects=False)
        return HeadAnswer(response.status_code, {k.lower(): v for k, v in response.headers.items()})

    async def _hash_content(self, url: str) -> _Outcome:
        """A ``GET`` of the content, hashed (redirects followed by httpx)."""
        self.stats.requests["GET"] += 1
        digest = hashlib.sha256()
        size = 0
        async with self._httpx().stream("GET", url, follow_redirects=True) as response:
            if response.status_code >= 300:
                return _judge_failure(response.status_code, response.headers) or http_status_failure(
                    response.status_code
                )
            async for chunk in response.aiter_bytes():
                digest.update(chunk)
                size += len(chunk)
        return content_fingerprint(digest.hexdigest(), size)

    # -- outcomes -------------------------------------------------------------------------------------

    def _settle(self, lane: _Lane, item: str | _Job, outcome: _Outcome) -> None:
        if isinstance(outcome, SourceFingerprint):
            lane.failures = 0
            self.found[item if isinstance(item, str) else item.url] = outcome
            return
        job = item if isinstance(item, _Job) else _Job(item)
        if isinstance(outcome, _Redirect):
            lane.failures = 0
            if job.hops >= MAX_REDIRECTS:
                self._settle_error(job, f"more than {MAX_REDIRECTS} redirects")
                return
            self.stats.redirects += 1
            job.hops += 1
            job.current = urljoin(job.current, outcome.location)
            self._route(job, job.current)
            return
        self._retry(lane, job, outcome)

    def _retry(self, lane: _Lane, job: _Job, outcome: _Retry) -> None:
        """Retry ``job`` after ``outcome`` (host-wide pause or its own backoff), or settle it as failed."""
        policy = self.policy
        if outcome.transport:
            lane.failures += 1
            if lane.failures >= policy.host_failure_limit:
                lane.down = f"{lane.failures} transport failures in a row, the last: {outcome.reason}"
        else:
            lane.failures = 0
        if outcome.rate_limited:
            job.rate_limited += 1
            exhausted = job.rate_limited >= policy.rate_limited_attempts
        else:
            job.attempts += 1
            exhausted = job.attempts > policy.max_attempts
        tries = job.rate_limited if outcome.rate_limited else job.attempts - 1
        delay = self._backoff.delay(tries - 1, outcome.retry_after)
        ready = time.monotonic() + delay
        if ready > self._deadline and lane.down is None and outcome.rate_limited:
            lane.down = f"still answering {outcome.reason} after the {policy.retry_budget:g} s retry budget"
        if exhausted or lane.down is not None or ready > self._deadline:
            self._settle_error(job, outcome.reason)
            return
        self.stats.retries += 1
        if outcome.rate_limited or outcome.transport:
            lane.paused_until = max(lane.paused_until, ready)
            lane.pending.appendleft(job)
        else:
            heapq.heappush(lane.delayed, (ready, next(self._sequence), job))

    def _settle_error(self, item: str | _Job, reason: str) -> None:
        self.found[item if isinstance(item, str) else item.url] = SourceFingerprint(None, None, reason)

    def _abandon(self, lane: _Lane) -> None:
        """The host was given up: its remaining sources are left without a fingerprint."""
        left = [*lane.pending, *(job for _, _, job in lane.delayed)]
        lane.pending.clear()
        lane.delayed.clear()
        for item in left:
            self._settle_error(item, f"not checked: the host was given up ({lane.down})")
        self.stats.abandoned += len(left)


def http_fingerprints(
    urls: Sequence[str], *, mode: str, policy: DetectionPolicy, stats: DetectionStats
) -> dict[str, SourceFingerprint]:
    """Fingerprint distinct HTTP(S) ``urls`` (see the module docstring); counts go to ``stats``."""
    if not urls:
        return {}
    stats.http_sources += len(urls)
    return asyncio.run(HttpDetector(policy=policy, mode=mode, stats=stats).run(urls))
