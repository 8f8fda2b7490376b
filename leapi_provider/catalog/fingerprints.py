"""Source fingerprints for incremental runs: has a source changed since its last successful enhancement?

A ``HEAD`` of each source URL; its ``ETag`` is the fingerprint, else ``Last-Modified`` with
``Content-Length``, else (or with ``change_detection="content"``) the sha256 of the bytes from a ``GET``.
``s3://`` sources are fingerprinted from their object metadata instead (ETag and size, see
:func:`leapi_provider.catalog.sources.s3_fingerprints`).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import httpx


@dataclass(frozen=True)
class SourceFingerprint:
    """How a source looked: ``etag:...``, ``last-modified:...;length:...`` or ``sha256:...`` (or ``None``)."""

    fingerprint: str | None
    content_length: int | None = None
    error: str | None = None
    #: The source answered 404 or 410: submitting it would only pay for a certain failure.
    gone: bool = False


async def _fingerprint(client: httpx.AsyncClient, url: str, mode: str) -> SourceFingerprint:
    try:
        if mode == "headers":
            head = await client.head(url)
            if head.status_code < 400:
                length = head.headers.get("Content-Length")
                size = int(length) if length and length.isdigit() else None
                if etag := head.headers.get("ETag"):
                    return SourceFingerprint(f"etag:{etag}", size)
                if modified := head.headers.get("Last-Modified"):
                    return SourceFingerprint(f"last-modified:{modified};length:{length or '?'}", size)
            # No validator (or HEAD refused): fall back to the content itself.
        digest = hashlib.sha256()
        size = 0
        async with client.stream("GET", url) as response:
            if response.status_code >= 400:
                status = response.status_code
                return SourceFingerprint(None, None, f"HTTP {status}", gone=status in (404, 410))
            async for chunk in response.aiter_bytes():
                digest.update(chunk)
                size += len(chunk)
        return SourceFingerprint(f"sha256:{digest.hexdigest()}", size)
    except httpx.HTTPError as exc:
        return SourceFingerprint(None, None, f"{type(exc).__name__}: {exc}")


def source_fingerprints(
    urls: Sequence[str],
    *,
    mode: str = "headers",
    concurrency: int = 32,
    timeout: float = 30.0,
    aws_conn_id: str | None = None,
) -> dict[str, SourceFingerprint]:
    """Fingerprint each distinct URL (``HEAD``, falling back to hashing a ``GET``), ``concurrency`` at a time.

    :param aws_conn_id: the connection that reads ``s3://`` sources' object metadata.
    """
    from leapi.transport import shared_tls_context
    from leapi_provider.catalog.sources import is_presigned_source, s3_fingerprints

    distinct = list(dict.fromkeys(urls))
    in_buckets = [url for url in distinct if is_presigned_source(url)]
    found = s3_fingerprints(in_buckets, aws_conn_id=aws_conn_id, mode=mode) if in_buckets else {}
    distinct = [url for url in distinct if url not in found]

    async def run() -> list[SourceFingerprint]:
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        semaphore = asyncio.Semaphore(concurrency)
        async with httpx.AsyncClient(
            timeout=timeout, follow_redirects=True, limits=limits, verify=shared_tls_context()
        ) as client:

            async def one(url: str) -> SourceFingerprint:
                async with semaphore:
                    return await _fingerprint(client, url, mode)

            return await asyncio.gather(*(one(u) for u in distinct))

    if distinct:
        found.update(zip(distinct, asyncio.run(run()), strict=True))
    return found
