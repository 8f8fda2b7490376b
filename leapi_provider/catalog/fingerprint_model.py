"""What a source fingerprint is, in the forms the result table stores, and what detecting them cost.

A leaf module (no other catalog import): the HTTP and the ``s3://`` detectors both build
:class:`SourceFingerprint` values here, and :mod:`leapi_provider.catalog.fingerprints` combines them.

The stored forms must never change: a fingerprint is compared with the one stored in the previous
results, so a new form would re-enhance (and pay for) every unchanged image once after an upgrade.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class SourceFingerprint:
    """How a source looked: ``etag:...``, ``last-modified:...;length:...``, ``sha256:...`` or, for
    ``s3://`` objects, ``etag:<ETag>;size:<bytes>`` (``None``: it could not be read)."""

    fingerprint: str | None
    content_length: int | None = None
    error: str | None = None
    #: The source answered 404 or 410: submitting it would only pay for a certain failure.
    gone: bool = False


def http_validator_fingerprint(
    *, etag: str | None, last_modified: str | None, content_length: str | None
) -> SourceFingerprint | None:
    """The fingerprint an HTTP answer's validators give (``ETag``, else ``Last-Modified`` with
    ``Content-Length``); ``None`` when it has neither (the content must be hashed)."""
    size = int(content_length) if content_length and content_length.isdigit() else None
    if etag:
        return SourceFingerprint(f"etag:{etag}", size)
    if last_modified:
        return SourceFingerprint(f"last-modified:{last_modified};length:{content_length or '?'}", size)
    return None


def content_fingerprint(sha256_hex: str, size: int) -> SourceFingerprint:
    """The fingerprint of hashed content (``change_detection="content"``, or no validator)."""
    return SourceFingerprint(f"sha256:{sha256_hex}", size)


def s3_object_fingerprint(etag: str | None, size: int | None) -> SourceFingerprint:
    """An ``s3://`` object's fingerprint from its metadata: the same from ``HeadObject`` and from
    ``ListObjectsV2`` (both give the quoted ``ETag`` and the size)."""
    return SourceFingerprint(f"etag:{etag};size:{size}", size)


def http_status_failure(status: int) -> SourceFingerprint:
    """No fingerprint: the source answered ``status`` (404 and 410 mean it is gone)."""
    return SourceFingerprint(None, None, f"HTTP {status}", gone=status in (404, 410))


@dataclass
class DetectionStats:
    """What change detection did: hosts and prefixes, requests by kind, retries; for the plan's log."""

    #: Distinct sources fingerprinted over HTTP(S) and in buckets.
    http_sources: int = 0
    s3_sources: int = 0
    http_hosts: int = 0
    #: ``s3://`` key ranges listed with ``ListObjectsV2`` (and how many sources they resolved).
    s3_prefixes_listed: int = 0
    s3_listed_sources: int = 0
    #: Requests made, by kind (``HEAD``, ``GET``, ``ListObjectsV2``, ``HeadObject``, ``GetObject``).
    requests: Counter[str] = field(default_factory=Counter)
    retries: int = 0
    redirects: int = 0
    #: Sources left without a fingerprint because their host was given up (unreachable, or its wait
    #: budget was spent).
    abandoned: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        kinds = ", ".join(f"{kind} {n}" for kind, n in sorted(self.requests.items())) or "none"
        return (
            f"{self.http_sources} http(s) source(s) on {self.http_hosts} host(s), {self.s3_sources} s3:// "
            f"source(s) ({self.s3_listed_sources} by listing {self.s3_prefixes_listed} key range(s)); "
            f"requests: {kinds}; retries {self.retries}, redirects {self.redirects}, "
            f"given up {self.abandoned}"
        )
