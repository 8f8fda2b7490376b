"""Downloading one source image safely: http(s) only, SSRF-checked on every hop, bounded in time and size,
and sniffed so that only JPEG, TIFF, PNG, BMP and WEBP reach the engine.

Runs in worker processes (blocking I/O). Every failure is a :class:`FetchError` whose message is shown
to the user in that image's result.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlsplit

import httpcore

from leapi_server.netguard import (
    AddressPolicy,
    BlockedAddressError,
    GuardedSyncBackend,
    check_http_url,
)

REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})
#: Bytes needed to recognise every supported format by its magic number (WEBP needs 12).
SNIFF_BYTES = 16
USER_AGENT = "leapi-server (+https://github.com/; LEAPI-compatible image fetcher)"


class FetchError(Exception):
    """The source could not be downloaded or is not a supported image. User-facing message."""


@dataclass(frozen=True)
class FetchPolicy:
    """Limits of one download. Picklable: it travels to worker processes with each task."""

    address_policy: AddressPolicy = field(default_factory=AddressPolicy)
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 15.0
    deadline_s: float = 60.0
    max_bytes: int = 64 * 1024 * 1024
    max_redirects: int = 5


_pools: dict[AddressPolicy, httpcore.ConnectionPool] = {}


def _pool(policy: AddressPolicy) -> httpcore.ConnectionPool:
    # One keep-alive pool per worker process (sources often come from one CDN host).
    pool = _pools.get(policy)
    if pool is None:
        pool = _pools[policy] = httpcore.ConnectionPool(
            network_backend=GuardedSyncBackend(policy), max_connections=8, keepalive_expiry=30.0
        )
    return pool


def fetch_image(url: str, policy: FetchPolicy) -> tuple[bytes, str]:
    """Download ``url``; return its bytes and sniffed format (``"JPEG"``, ``"PNG"``, ...).

    :raises FetchError: refused address, network error, timeout, HTTP error, too large, empty or not an
        image in a supported format.
    """
    deadline = time.monotonic() + policy.deadline_s
    current = url
    for _hop in range(policy.max_redirects + 1):
        problem = check_http_url(current, policy.address_policy)
        if problem:
            what = "source URL" if current == url else f"redirect to {current}"
            raise FetchError(f"{what} {problem}")
        location = _get(current, policy, deadline)
        if isinstance(location, tuple):
            return location
        current = urljoin(current, location)
    raise FetchError(f"too many redirects (more than {policy.max_redirects})")


def _get(url: str, policy: FetchPolicy, deadline: float) -> tuple[bytes, str] | str:
    """One request: the body and format, or the ``Location`` of a redirect."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise FetchError(f"download did not finish within {policy.deadline_s:g} s")
    timeouts = {
        "connect": min(policy.connect_timeout_s, remaining),
        "read": min(policy.read_timeout_s, remaining),
        "write": min(policy.read_timeout_s, remaining),
        "pool": min(policy.connect_timeout_s, remaining),
    }
    host = urlsplit(url).hostname or ""
    headers = [(b"User-Agent", USER_AGENT.encode()), (b"Accept", b"image/*")]
    try:
        with _pool(policy.address_policy).stream(
            "GET", url, headers=headers, extensions={"timeout": timeouts}
        ) as response:
            if response.status in REDIRECT_CODES:
                location = _header(response, b"location")
                if not location:
                    raise FetchError(f"source answered HTTP {response.status} without a Location")
                return location
            if response.status >= 400:
                raise FetchError(f"source answered HTTP {response.status}")
            if response.status != 200:
                raise FetchError(f"source answered HTTP {response.status}, expected 200")
            declared = _header(response, b"content-length")
            if declared and declared.isdigit() and int(declared) > policy.max_bytes:
                raise FetchError(
                    f"source is {int(declared)} bytes, over the limit of {policy.max_bytes} bytes"
                )
            return _read_body(response, policy, deadline)
    except BlockedAddressError as exc:
        raise FetchError(f"source refused: {exc}") from None
    except httpcore.TimeoutException as exc:
        raise FetchError(f"timed out fetching the source from {host} ({type(exc).__name__})") from None
    except httpcore.NetworkError as exc:
        raise FetchError(
            f"network error fetching the source from {host}: {exc or type(exc).__name__}"
        ) from None
    except (httpcore.ProtocolError, httpcore.UnsupportedProtocol) as exc:
        raise FetchError(f"invalid HTTP answer from {host}: {exc or type(exc).__name__}") from None


def _read_body(response: httpcore.Response, policy: FetchPolicy, deadline: float) -> tuple[bytes, str]:
    chunks: list[bytes] = []
    size = 0
    image_format: str | None = None
    for chunk in response.iter_stream():
        chunks.append(chunk)
        size += len(chunk)
        if size > policy.max_bytes:
            raise FetchError(f"source is larger than the limit of {policy.max_bytes} bytes")
        if time.monotonic() > deadline:
            raise FetchError(f"download did not finish within {policy.deadline_s:g} s")
        if image_format is None and size >= SNIFF_BYTES:
            # Refuse non-images early instead of downloading them whole.
            image_format = _sniff(b"".join(chunks)[:SNIFF_BYTES])
    data = b"".join(chunks)
    if not data:
        raise FetchError("source is empty (0 bytes)")
    return data, image_format or _sniff(data)


def _sniff(head: bytes) -> str:
    from leapi_server.engine import sniff_format  # the engine (numpy, OpenCV) loads in workers only

    image_format = sniff_format(head)
    if image_format is None:
        raise FetchError("source is not a supported image: expected JPEG, TIFF, PNG, BMP or WEBP content")
    return image_format


def _header(response: httpcore.Response, name: bytes) -> str | None:
    for key, value in response.headers:
        if key.lower() == name:
            return value.decode("latin-1").strip()
    return None
