"""Source fingerprints for incremental runs: has a source changed since its last successful enhancement?

Each distinct source is fingerprinted once:

* ``http(s)``: a ``HEAD``; its ``ETag`` is the fingerprint, else ``Last-Modified`` with ``Content-Length``,
  else (or with ``change_detection="content"``) the sha256 of the bytes from a ``GET``. Concurrent, at
  most ``per_host`` at once per host, with polite retries: :mod:`leapi_provider.catalog.http_fingerprints`.
* ``s3://``: the object's ``ETag`` and size, from ``ListObjectsV2`` pages where the manifest names enough
  of a folder, else ``HeadObject``: :mod:`leapi_provider.catalog.s3_fingerprints`.

Imports go one way: this module uses :mod:`~leapi_provider.catalog.sources` (through the S3 detector), never
the reverse; :class:`SourceFingerprint` lives in the leaf :mod:`~leapi_provider.catalog.fingerprint_model`.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence

from leapi_provider.catalog.fingerprint_model import DetectionStats, SourceFingerprint
from leapi_provider.catalog.http_fingerprints import DetectionPolicy, http_fingerprints
from leapi_provider.catalog.s3_fingerprints import s3_fingerprints
from leapi_provider.catalog.sources import is_presigned_source

__all__ = [
    "DetectionPolicy",
    "DetectionStats",
    "SourceFingerprint",
    "SourceFingerprints",
    "source_fingerprints",
]


class SourceFingerprints(dict[str, SourceFingerprint]):
    """Each distinct source URL -> its :class:`SourceFingerprint`, with what finding them cost (:attr:`stats`)."""

    def __init__(self, found: dict[str, SourceFingerprint], stats: DetectionStats) -> None:
        super().__init__(found)
        self.stats = stats


def source_fingerprints(
    urls: Sequence[str],
    *,
    mode: str = "headers",
    aws_conn_id: str | None = None,
    policy: DetectionPolicy | None = None,
    timeout: float | None = None,
) -> SourceFingerprints:
    """Fingerprint each distinct URL of ``urls``.

    :param mode: ``headers`` (validators, hashing only without them) or ``content`` (always hash).
    :param aws_conn_id: the connection that reads ``s3://`` sources' object metadata.
    :param policy: per-host bound, retries and timeouts of the HTTP requests (default:
        :class:`DetectionPolicy`).
    :param timeout: seconds to connect and to answer, overriding the policy's.
    """
    started = time.perf_counter()
    policy = policy or DetectionPolicy()
    if timeout is not None:
        policy = dataclasses.replace(policy, timeout=timeout)
    stats = DetectionStats()
    distinct = list(dict.fromkeys(urls))
    in_buckets = [url for url in distinct if is_presigned_source(url)]
    over_http = [url for url in distinct if not is_presigned_source(url)] if in_buckets else distinct
    found = s3_fingerprints(in_buckets, aws_conn_id=aws_conn_id, mode=mode, stats=stats)
    found.update(http_fingerprints(over_http, mode=mode, policy=policy, stats=stats))
    stats.seconds = time.perf_counter() - started
    return SourceFingerprints(found, stats)
