"""Source images in a private bucket: ``s3://`` source URLs, presigned for LEAPI at submit time.

LEAPI fetches every source by URL, so a source in a private bucket is handed to it as a presigned ``GET``
URL, made by the run's storage connection (``aws_conn_id``) with the Amazon provider's
``S3Hook.generate_presigned_url``. A presigned URL is a credential: it exists only in the request sent to
LEAPI. Logs, XCom and the result table keep the ``s3://`` URI (:func:`restore_source_uris` maps the URLs
in LEAPI's answers back and redacts the query string of any other URL, with the client's
:func:`leapi.redaction.redact_text`).

Only ``s3://`` is presigned: it is the scheme whose provider (Amazon) this provider already depends on for
its ``[amazon]`` extra. ``gs://`` and other ``ObjectStoragePath`` schemes are rejected by manifest
validation rather than handed to LEAPI unsigned.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

log = logging.getLogger(__name__)

#: Source URL schemes that are presigned at submit (the manifest validation accepts these besides http(s)).
PRESIGNED_SCHEMES = ("s3",)


def is_presigned_source(url: str) -> bool:
    """Whether ``url`` names an object in a bucket that is presigned for LEAPI (``s3://bucket/key``)."""
    scheme, sep, _ = url.partition("://")
    return bool(sep) and scheme.lower() in PRESIGNED_SCHEMES


def split_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/key`` as ``(bucket, key)``. :raises ValueError: not an ``s3://`` URI with a key."""
    scheme, _, rest = uri.partition("://")
    bucket, _, key = rest.partition("/")
    if scheme.lower() != "s3" or not bucket or not key:
        raise ValueError(f"not an s3://bucket/key URI: {uri}")
    return bucket, key


class PresignedUrls:
    """Presigns the ``s3://`` sources of one submit; remembers which URL stands for which URI.

    :param aws_conn_id: the storage connection (its credentials sign the URLs).
    :param expires_in: how long each URL stays valid, in seconds: long enough for LEAPI's queue.
    """

    def __init__(self, *, aws_conn_id: str | None, expires_in: int) -> None:
        self.aws_conn_id = aws_conn_id
        self.expires_in = expires_in
        #: Each presigned URL made so far -> the ``s3://`` URI it stands for.
        self.uri_of: dict[str, str] = {}

    @cached_property
    def _s3(self) -> S3Hook:
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        return S3Hook(aws_conn_id=self.aws_conn_id)

    def url_for(self, source_url: str) -> str:
        """The URL LEAPI is given for ``source_url``: a fresh presigned ``GET`` for ``s3://``, else itself.

        :raises ValueError: the storage connection could not presign it (the cause is chained).
        """
        if not is_presigned_source(source_url):
            return source_url
        bucket, key = split_s3_uri(source_url)
        url = self._s3.generate_presigned_url(
            client_method="get_object",
            params={"Bucket": bucket, "Key": key},
            expires_in=self.expires_in,
        )
        if not url:  # (the hook logs the client error and returns None)
            raise ValueError(f"could not presign {source_url} with connection {self.aws_conn_id!r}")
        self.uri_of[url] = source_url
        return url

    def urls_for(self, source_urls: Sequence[str]) -> list[str]:
        return [self.url_for(url) for url in source_urls]


def restore_source_uris(text: str, uri_of: Mapping[str, str]) -> str:
    """``text`` with each presigned URL of ``uri_of`` replaced by its ``s3://`` URI, and the query string
    of any other URL redacted (a presigned URL this run did not make, or one cut short)."""
    from leapi.redaction import redact_text

    for url, uri in uri_of.items():
        if url in text:
            text = text.replace(url, uri)
    return redact_text(text)


def read_source_bytes(source_url: str, *, aws_conn_id: str | None, http: Any) -> bytes:
    """The bytes of one source (for the contact sheet): ``s3://`` through the connection, else ``http``.

    :param http: an ``httpx.Client``.
    :raises OSError | httpx.HTTPError: the source cannot be read.
    """
    if is_presigned_source(source_url):
        from leapi_provider.catalog.storage import storage_path

        return storage_path(source_url, aws_conn_id).read_bytes()
    response = http.get(source_url)
    response.raise_for_status()
    return bytes(response.content)
