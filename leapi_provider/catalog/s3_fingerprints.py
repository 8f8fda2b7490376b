"""Change detection for ``s3://`` sources from object metadata: listed per key range, not asked per key.

A ``ListObjectsV2`` page gives up to 1,000 keys with their ``ETag`` and size; ``HeadObject`` gives one. The
fingerprint is the same from either (``etag:<ETag>;size:<bytes>``, see
:func:`~leapi_provider.catalog.fingerprint_model.s3_object_fingerprint`), so results stored by earlier
versions, which asked ``HeadObject``, still match.

How keys are asked:

* The named keys of a bucket, sorted (S3 lists in that order), are cut into ranges of at most
  :data:`KEYS_PER_RANGE` keys; ranges are listed in parallel, each with ``Prefix`` set to the common
  prefix of its keys (the folder they share, or more). Keys one per folder (``sku-1/main.jpg``,
  ``sku-2/main.jpg``) are listed as well as keys of one folder.
* A listing starts just before the next key it still needs (``StartAfter``), so objects the manifest
  does not name are skipped over rather than paged through, and it stops once it has passed its last key.
  A named key the listing passes over without seeing is missing: ``gone``, like a 404.
* A page costs about :data:`PAGE_COST_IN_HEADS` ``HeadObject`` requests (in time, and S3 bills a LIST
  12.5 times a HEAD). So a range with fewer named keys than that is asked with ``HeadObject`` only, and a
  listing whose page resolved fewer named keys than that (the prefix holds more than about 100 objects per
  named key there) hands the rest of its range to ``HeadObject``. Listing therefore costs at most about one
  page more than asking each key, and a folder the manifest names in full costs one request per 1,000 keys.
* A bucket that refuses ``ListObjectsV2`` (no ``s3:ListBucket`` permission) is asked with ``HeadObject``.

``change_detection="content"`` hashes each object's bytes (``GetObject``) instead.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from leapi_provider.catalog.fingerprint_model import (
    DetectionStats,
    SourceFingerprint,
    content_fingerprint,
    s3_object_fingerprint,
)
from leapi_provider.catalog.sources import split_s3_uri

log = logging.getLogger(__name__)

#: Keys per ``ListObjectsV2`` page (the API's maximum).
LIST_PAGE_SIZE = 1000
#: ``HeadObject`` requests one listed page is worth (see the module docstring).
PAGE_COST_IN_HEADS = 10
#: Named keys per listed range: ranges are listed in parallel.
KEYS_PER_RANGE = 5000
#: Requests in flight at once (threads sharing one client, and its connection pool).
S3_WORKERS = 16


def _common_prefix(keys: Sequence[str]) -> str:
    """The longest common prefix (in characters, not path parts) of sorted ``keys``: the first's and the
    last's."""
    first, last = keys[0], keys[-1]
    length = next(
        (i for i, (a, b) in enumerate(zip(first, last, strict=False)) if a != b), min(len(first), len(last))
    )
    return first[:length]


def _gone(code: str) -> SourceFingerprint:
    return SourceFingerprint(None, None, f"S3 {code}", gone=True)


class S3Detector:
    """Fingerprints ``s3://`` objects with one client (see the module docstring)."""

    def __init__(self, client: Any, *, stats: DetectionStats) -> None:
        self.client = client
        self.stats = stats
        self._lock = threading.Lock()
        #: Buckets that refused ``ListObjectsV2``.
        self._unlistable: set[str] = set()

    def _count(self, kind: str, n: int = 1) -> None:
        with self._lock:
            self.stats.requests[kind] += n

    def fingerprints(self, uris: Sequence[str], *, mode: str) -> dict[str, SourceFingerprint]:
        """Fingerprint distinct ``s3://`` ``uris``."""
        by_object = {split_s3_uri(uri): uri for uri in uris}
        found: dict[tuple[str, str], SourceFingerprint] = {}
        with ThreadPoolExecutor(max_workers=S3_WORKERS, thread_name_prefix="s3-fingerprints") as pool:
            if mode == "content":
                to_ask = list(by_object)
                ask: Callable[[tuple[str, str]], SourceFingerprint] = self._hash_object
            else:
                ranges, to_ask = self._ranges(list(by_object))
                for listed, rest in pool.map(lambda r: self._list_range(*r), ranges):
                    found.update(listed)
                    to_ask.extend(rest)
                ask = self._head_object
            found.update(zip(to_ask, pool.map(ask, to_ask), strict=True))
        return {uri: found[obj] for obj, uri in by_object.items()}

    @staticmethod
    def _ranges(objects: list[tuple[str, str]]) -> tuple[list[tuple[str, list[str]]], list[tuple[str, str]]]:
        """Key ranges worth listing, ``(bucket, sorted keys)``; and the objects to ask one by one."""
        by_bucket: dict[str, list[str]] = defaultdict(list)
        for bucket, key in objects:
            by_bucket[bucket].append(key)
        ranges: list[tuple[str, list[str]]] = []
        singles: list[tuple[str, str]] = []
        for bucket, keys in by_bucket.items():
            keys.sort()
            for start in range(0, len(keys), KEYS_PER_RANGE):
                chunk = keys[start : start + KEYS_PER_RANGE]
                if len(chunk) < PAGE_COST_IN_HEADS:
                    singles.extend((bucket, key) for key in chunk)
                else:
                    ranges.append((bucket, chunk))
        return ranges, singles

    def _list_range(
        self, bucket: str, keys: list[str]
    ) -> tuple[dict[tuple[str, str], SourceFingerprint], list[tuple[str, str]]]:
        """List the range of sorted ``keys``; returns what the listing resolved and the keys left to ask."""
        from botocore.exceptions import BotoCoreError, ClientError

        found: dict[tuple[str, str], SourceFingerprint] = {}
        prefix, i, pages = _common_prefix(keys), 0, 0
        start_after = keys[0][:-1]  # (just below the first key: objects before it are not paged through)
        while i < len(keys) and bucket not in self._unlistable:
            self._count("ListObjectsV2")
            try:
                page = self.client.list_objects_v2(
                    Bucket=bucket, Prefix=prefix, MaxKeys=LIST_PAGE_SIZE, StartAfter=start_after
                )
            except (ClientError, BotoCoreError) as exc:
                self._refused(bucket, exc)
                break
            pages += 1
            before = i
            contents = page.get("Contents", [])
            for obj in contents:
                key = obj["Key"]
                while i < len(keys) and keys[i] < key:
                    found[(bucket, keys[i])] = _gone("404 (not listed)")
                    i += 1
                if i < len(keys) and keys[i] == key:
                    found[(bucket, key)] = s3_object_fingerprint(obj.get("ETag"), obj.get("Size"))
                    i += 1
            if not page.get("IsTruncated") or not contents:
                found.update(((bucket, k), _gone("404 (not listed)")) for k in keys[i:])
                i = len(keys)
            elif i == len(keys):
                break  # (the range's last key is listed: the rest of the prefix is another range's)
            elif i - before < PAGE_COST_IN_HEADS:
                break  # sparse here: asking the rest key by key is cheaper
            else:
                # (just below the next key still needed: unnamed objects before it are skipped)
                start_after = max(contents[-1]["Key"], keys[i][:-1])
        with self._lock:
            self.stats.s3_prefixes_listed += 1 if pages else 0
            self.stats.s3_listed_sources += len(found)
        return found, [(bucket, key) for key in keys[i:]]

    def _refused(self, bucket: str, exc: Exception) -> None:
        with self._lock:
            if bucket in self._unlistable:
                return
            self._unlistable.add(bucket)
        log.warning(
            "Listing s3://%s failed (%s): its sources are fingerprinted with one HeadObject each. Grant the "
            "connection s3:ListBucket on it for change detection at one request per 1,000 objects.",
            bucket,
            exc,
        )

    def _head_object(self, obj: tuple[str, str]) -> SourceFingerprint:
        return self._ask(obj, content=False)

    def _hash_object(self, obj: tuple[str, str]) -> SourceFingerprint:
        return self._ask(obj, content=True)

    def _ask(self, obj: tuple[str, str], *, content: bool) -> SourceFingerprint:
        """One object's fingerprint from ``HeadObject`` (or its hashed bytes, ``GetObject``)."""
        from botocore.exceptions import BotoCoreError, ClientError

        bucket, key = obj
        self._count("GetObject" if content else "HeadObject")
        try:
            if content:
                body = self.client.get_object(Bucket=bucket, Key=key)["Body"]
                digest = hashlib.sha256()
                size = 0
                for chunk in iter(lambda: body.read(1024 * 1024), b""):
                    digest.update(chunk)
                    size += len(chunk)
                return content_fingerprint(digest.hexdigest(), size)
            head: dict[str, Any] = self.client.head_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            code = exc.response.get("Error", {}).get("Code")
            gone = status == 404 or code in ("404", "NoSuchKey", "NotFound")
            return SourceFingerprint(None, None, f"S3 {code or status}", gone=gone)
        except BotoCoreError as exc:
            return SourceFingerprint(None, None, f"{type(exc).__name__}: {exc}")
        return s3_object_fingerprint(head.get("ETag"), head.get("ContentLength"))


def s3_client(aws_conn_id: str | None) -> Any:
    """An S3 client of the connection, its connection pool sized for :data:`S3_WORKERS` threads."""
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook
    from botocore.config import Config

    hook = S3Hook(aws_conn_id=aws_conn_id)
    pool = Config(max_pool_connections=S3_WORKERS)
    return hook.get_client_type(config=hook.config.merge(pool) if hook.config else pool)


def s3_fingerprints(
    uris: Sequence[str], *, aws_conn_id: str | None, mode: str, stats: DetectionStats
) -> dict[str, SourceFingerprint]:
    """Fingerprint distinct ``s3://`` ``uris`` with the connection ``aws_conn_id``; counts go to ``stats``."""
    if not uris:
        return {}
    stats.s3_sources += len(uris)
    return S3Detector(s3_client(aws_conn_id), stats=stats).fingerprints(uris, mode=mode)
