"""A source-image server for catalog-scale benchmarks: a few hundred JPEGs under any number of distinct URLs.

Writing 100,000 JPEG files would take minutes and hundreds of MB; a catalog bench needs 100,000 distinct
*sources*, not 100,000 encodings. So the bench writes a few hundred variants (:func:`write_variants`) and
this server answers ``GET``/``HEAD /s/<n>/<variant>.jpg`` for every ``n`` with the variant's bytes plus a
JPEG comment segment naming the URL's path, right after the start-of-image marker. What the clients see:

* **change detection** (``HEAD`` per source): a distinct ``ETag`` per URL (the SHA-256 of the bytes served),
  ``Content-Length``, ``Last-Modified``: the validators a CDN sends, answered without a body;
* **leapi-server** (``GET`` per source): a distinct, valid JPEG per URL (decoders skip comment segments), so
  nothing can be served from a cache keyed by URL or by content that a real catalog would not hit.

It runs as its own process (``python -m tests.bench.scale_sources``) under uvicorn (httptools and uvloop
when installed), so that it shares no interpreter lock with the bench's clients: measured on 2 cores with
wrk (keep-alive), about 10x the throughput of the thread-per-connection :func:`devkit.sources.serve_directory`
(see docs/benchmarks.md, the scale section). ``GET /_stats`` returns the ``GET``/``HEAD`` counts answered.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from email.utils import formatdate
from pathlib import Path
from typing import Any

import httpx

from devkit.server import free_port

#: URL path prefix of every source: ``/s/<n>/<variant file name>``.
SOURCE_PREFIX = "/s/"
STATS_PATH = "/_stats"
_LAST_MODIFIED = formatdate(1_767_225_600, usegmt=True)  # 2026-01-01: sources never change in a bench
_START_TIMEOUT_S = 60.0

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


@dataclass(frozen=True)
class Variant:
    """One distinct JPEG the server serves under many URLs."""

    file_name: str
    width: int
    height: int


def write_variants(
    folder: Path, count: int, *, long_sides: tuple[int, ...] = (64, 80, 96), prefix: str = "v"
) -> list[Variant]:
    """Write ``count`` distinct small JPEGs (photo, size and quality cycling; deterministic) into ``folder``."""
    from devkit.catalog import write_sample_images

    images = write_sample_images(folder, count, long_sides=long_sides, prefix=prefix)
    return [Variant(i.file_name, i.width, i.height) for i in images]


def source_path(index: int, variant: Variant) -> str:
    """The URL path of source number ``index`` showing ``variant``."""
    return f"{SOURCE_PREFIX}{index:07d}/{variant.file_name}"


def with_comment(jpeg: bytes, text: bytes) -> bytes:
    """``jpeg`` with a COM segment holding ``text`` right after its SOI marker (still a valid JPEG)."""
    if jpeg[:2] != b"\xff\xd8":
        raise ValueError("not a JPEG (no SOI marker)")
    segment = b"\xff\xfe" + (len(text) + 2).to_bytes(2, "big") + text
    return jpeg[:2] + segment + jpeg[2:]


class SourceApp:
    """The ASGI application: ``/s/<n>/<variant>`` from the variants in ``folder`` (read once)."""

    def __init__(self, folder: Path) -> None:
        self.variants = {p.name: p.read_bytes() for p in folder.glob("*.jpg")}
        self.counts = {"GET": 0, "HEAD": 0, "other": 0}

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        method, path = scope["method"], scope["path"]
        if path == STATS_PATH:
            await _respond(
                send, 200, json.dumps(self.counts).encode(), [(b"content-type", b"application/json")]
            )
            return
        self.counts[method if method in ("GET", "HEAD") else "other"] += 1
        variant = self.variants.get(path.rpartition("/")[2]) if path.startswith(SOURCE_PREFIX) else None
        if variant is None or method not in ("GET", "HEAD"):
            await _respond(send, 404 if variant is None else 405, b"", [])
            return
        body = with_comment(variant, path.encode())
        headers = [
            (b"content-type", b"image/jpeg"),
            (b"etag", f'"{hashlib.sha256(body).hexdigest()[:32]}"'.encode()),
            (b"last-modified", _LAST_MODIFIED.encode()),
            (b"cache-control", b"public, max-age=86400"),
        ]
        await _respond(send, 200, b"" if method == "HEAD" else body, headers, length=len(body))


async def _respond(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]], *, length: int | None = None
) -> None:
    size = len(body) if length is None else length
    headers = [*headers, (b"content-length", str(size).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


@dataclass(frozen=True)
class SourceServer:
    base_url: str
    pid: int

    def stats(self) -> dict[str, int]:
        """The ``GET``/``HEAD`` counts the server answered so far (its own ``/_stats`` reads excluded)."""
        counts: dict[str, int] = httpx.get(self.base_url + STATS_PATH, timeout=10).json()
        return counts


@contextlib.contextmanager
def serve_scale_sources(folder: Path, *, log_path: Path | None = None) -> Iterator[SourceServer]:
    """Run the source server on the variants in ``folder`` (its own process, a free 127.0.0.1 port).
    Stopped (SIGTERM, then SIGKILL) on exit."""
    port = free_port()
    log = open(log_path or os.devnull, "ab")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.bench.scale_sources", "--dir", str(folder), "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        cwd=Path(__file__).resolve().parents[2],
    )
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + _START_TIMEOUT_S
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(base_url + STATS_PATH, timeout=1).status_code == 200:
                    break
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the scale source server did not start (exit {process.poll()})")
            time.sleep(0.1)
        yield SourceServer(base_url, process.pid)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        log.close()


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, required=True, help="folder of variant JPEGs")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    app = SourceApp(args.dir)
    # No access log: 100k lines per run would cost this process more than answering.
    uvicorn.run(app, host="127.0.0.1", port=args.port, access_log=False, log_level="warning", backlog=2048)


if __name__ == "__main__":
    main()
