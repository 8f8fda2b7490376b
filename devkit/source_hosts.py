"""A fast, scriptable source host for change-detection tests and benches: an asyncio HTTP/1.1 server on
127.0.0.1 that answers ``HEAD`` (and ``GET``) for any path, with keep-alive, the way a CDN answers.

:func:`devkit.sources.serve_directory` (``http.server``) speaks HTTP/1.0 and spends a thread and a TCP
connection on every request, so a benchmark against it measures that server. This one answers a ``HEAD`` in
a few tens of microseconds, and counts what a test wants to assert at the server: requests by method and path, and the
most requests it was answering at once (the client's real concurrency against this host).

Every path exists, with an ``ETag`` derived from the path and the host's ``version`` (bump it to "change"
every source) and ``Content-Length`` ``size``; ``gone`` paths answer 404 (or 410), ``script`` lists
answers a path gives before its normal one (e.g. a 429 with ``Retry-After``), and ``delay_s`` makes a slow
host. :func:`serve_source_host` runs one in a thread of the calling process (tests);
``python -m devkit.source_hosts --port N`` runs one in its own process (benches), where
``GET /__stats`` answers its counters as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import threading
import time
import zlib
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

#: One scripted answer: ``(status, headers)``.
Answer = tuple[int, Mapping[str, str]]
STATS_PATH = "/__stats"
_REASONS = {200: "OK", 404: "Not Found", 410: "Gone", 429: "Too Many Requests", 500: "Internal Server Error"}
_REASONS |= {502: "Bad Gateway", 503: "Service Unavailable"}


@dataclass
class SourceHostStats:
    """What the host saw. Only the server's event loop writes it: read it once the client is done."""

    requests: Counter[str] = field(default_factory=Counter)
    by_path: Counter[str] = field(default_factory=Counter)
    #: ``(monotonic time, method, path, status)`` of every answer, in the order they were sent.
    answered: list[tuple[float, str, str, int]] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    connections: int = 0
    max_connections: int = 0
    #: Connections accepted in all (keep-alive keeps this near the client's concurrency).
    opened: int = 0
    #: Keep :attr:`by_path` and :attr:`answered` (a bench sending millions of requests does not).
    keep_log: bool = True

    def as_json(self) -> dict[str, object]:
        return {
            "requests": dict(self.requests),
            "max_in_flight": self.max_in_flight,
            "max_connections": self.max_connections,
            "opened": self.opened,
        }


@dataclass
class SourceHost:
    """How the host answers (attributes may be changed between requests; see the module docstring)."""

    version: str = "1"
    size: int = 3000
    delay_s: float = 0.0
    gone: Mapping[str, int] = field(default_factory=dict)
    script: dict[str, list[Answer]] = field(default_factory=dict)
    #: Answer ``HEAD`` with this status (e.g. 405: a host that refuses ``HEAD``; the client must ``GET``).
    head_status: int | None = None
    stats: SourceHostStats = field(default_factory=SourceHostStats)

    def etag(self, path: str) -> str:
        return f'"{zlib.crc32(path.encode()):08x}-{self.version}"'

    def answer(self, method: str, path: str) -> tuple[int, dict[str, str], bytes]:
        """Status, headers and body of one request."""
        if path == STATS_PATH:
            return 200, {"Content-Type": "application/json"}, json.dumps(self.stats.as_json()).encode()
        self.stats.requests[method] += 1
        if self.stats.keep_log:
            self.stats.by_path[path] += 1
        if queued := self.script.get(path):
            status, headers = queued.pop(0)
            return status, dict(headers), b""
        if path in self.gone:
            return self.gone[path], {}, b""
        if method == "HEAD" and self.head_status is not None:
            return self.head_status, {}, b""
        headers = {"ETag": self.etag(path), "Content-Type": "image/jpeg", "Content-Length": str(self.size)}
        if method == "HEAD":
            return 200, headers, b""
        return 200, headers, (path.encode() * (self.size // max(len(path), 1) + 1))[: self.size]


class _Connection(asyncio.Protocol):
    """One client connection: requests answered in order (keep-alive; pipelined requests queue)."""

    def __init__(self, host: SourceHost) -> None:
        self.host = host
        self.buffer = b""
        self.transport: asyncio.Transport | None = None
        self.previous: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        stats = self.host.stats
        stats.connections += 1
        stats.opened += 1
        stats.max_connections = max(stats.max_connections, stats.connections)

    def connection_lost(self, exc: Exception | None) -> None:
        self.host.stats.connections -= 1

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            head, self.buffer = self.buffer[:end], self.buffer[end + 4 :]
            method, target, _ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
            stats = self.host.stats
            stats.in_flight += 1
            stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
            if self.host.delay_s or self.previous is not None:
                self.previous = asyncio.ensure_future(self._later(method, target, self.previous))
            else:
                self._respond(method, target)

    async def _later(self, method: str, target: str, previous: asyncio.Future[None] | None) -> None:
        if previous is not None:
            await previous
        await asyncio.sleep(self.host.delay_s)
        self._respond(method, target)

    def _respond(self, method: str, target: str) -> None:
        path = target.split("?", 1)[0]
        status, headers, body = self.host.answer(method, path)
        headers.setdefault("Content-Length", str(len(body)))
        lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        payload = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        stats = self.host.stats
        stats.in_flight -= 1
        if stats.keep_log and path != STATS_PATH:
            stats.answered.append((time.monotonic(), method, path, status))
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(payload if method == "HEAD" else payload + body)


async def _serve(host: SourceHost, port: int, ready: asyncio.Future[int] | None = None) -> asyncio.Server:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Connection(host), "127.0.0.1", port, backlog=1024)
    if ready is not None:
        ready.set_result(server.sockets[0].getsockname()[1])
    return server


@contextlib.contextmanager
def serve_source_hosts(hosts: Sequence[SourceHost]) -> Iterator[list[str]]:
    """Serve each of ``hosts`` on its own free port of 127.0.0.1, from one thread; yields their base URLs."""
    loop = asyncio.new_event_loop()
    servers: list[asyncio.Server] = []
    ports: list[int] = []
    started = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        for host in hosts:
            servers.append(loop.run_until_complete(_serve(host, 0)))
            ports.append(servers[-1].sockets[0].getsockname()[1])
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=run, name="source-hosts", daemon=True)
    thread.start()
    started.wait(10)
    try:
        yield [f"http://127.0.0.1:{port}" for port in ports]
    finally:

        def stop() -> None:
            for server in servers:
                server.close()
            loop.stop()

        loop.call_soon_threadsafe(stop)
        thread.join(5)
        loop.close()


@contextlib.contextmanager
def serve_source_host(host: SourceHost | None = None) -> Iterator[str]:
    """:func:`serve_source_hosts` for one host (default: a fast one); yields its base URL."""
    with serve_source_hosts([host or SourceHost()]) as (base_url,):
        yield base_url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--version", default="1")
    args = parser.parse_args()
    host = SourceHost(version=args.version)
    host.stats.keep_log = False  # (a bench sends millions of requests)

    async def run() -> None:
        ready: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        server = await _serve(host, args.port, ready)
        print(f"http://127.0.0.1:{await ready}", flush=True)
        async with server:
            await server.serve_forever()

    asyncio.run(run())


if __name__ == "__main__":
    main()
