"""Downloading result images: where the bytes go, and the checks made before anyone trusts them.

A download is streamed chunk by chunk (never whole in memory) into a :class:`DownloadTarget`, which counts
and hashes the bytes and can start over after a broken attempt. Checks, in order:

1. complete: the byte count equals the ``Content-Length`` the server announced (else the download is
   retried, from the start);
2. :func:`verify_result` (results only): not empty, an image whose header (read in pure Python by
   :func:`~leapi.imageinfo.read_image_info`, or by your ``inspect`` callable) has the width, height and
   format the API reported in ``output_object``;
3. the sha256 of the bytes is returned, for the caller's records.

A path destination is written through a hidden temp name in the same folder and renamed into place only
once every check passed, so the path never holds a partial or unverified file. A stream destination
receives the bytes as they arrive: discard it when a check fails.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Self

import httpx

from leapi.errors import LeapiHTTPError, LeapiResultVerificationError
from leapi.imageinfo import ImageInfo, ImageInspector, read_image_info
from leapi.redaction import redact_text, redact_url
from leapi.results import ResultFile
from leapi.transport import Outcome, RetryPolicy, Verdict, http_error, log, retry_after_seconds

DOWNLOAD_CHUNK_BYTES = 1024 * 1024
#: A destination that cannot seek back has its image header read from the first bytes, kept on the way.
HEADER_PREFIX_BYTES = 1024 * 1024
#: Answers of a temp URL that mean the result is gone (S3 answers 403 to an expired presigned URL).
EXPIRED_STATUSES = frozenset({403, 404, 410})

#: Where a download goes: a file path, or a binary stream (seekable to be restartable).
Destination = str | os.PathLike[str] | IO[bytes]


@dataclass(frozen=True)
class DownloadedResult:
    """What a download wrote."""

    byte_count: int
    sha256: str
    content_type: str | None
    #: The ``Content-Length`` the server announced, if any (already checked against ``byte_count``).
    content_length: int | None


@dataclass(frozen=True)
class VerifiedResult:
    """A result downloaded and checked: complete, an image, of the size and format the API reported."""

    file: ResultFile
    byte_count: int
    sha256: str
    width: int
    height: int
    #: The detected format, e.g. ``JPEG``.
    format: str
    mime: str


class DownloadTarget:
    """The destination of one download, across its attempts (a context manager).

    :param destination: a path (written through ``.<name>.partial`` and renamed by :meth:`commit`) or a
        binary stream (written from its current position).
    """

    def __init__(self, destination: Destination) -> None:
        self.path: Path | None = None
        self._partial: Path | None = None
        if isinstance(destination, (str, os.PathLike)):
            self.path = Path(destination)
            self._partial = self.path.with_name(f".{self.path.name}.partial")
            self.file: IO[bytes] = self._partial.open("w+b")
        else:
            self.file = destination
        self.start = self.file.tell() if self.file.seekable() else None
        self._reset()

    def _reset(self) -> None:
        self.written = 0
        self._digest = hashlib.sha256()
        self._prefix = bytearray()

    @property
    def can_restart(self) -> bool:
        """Whether a broken attempt can be undone (nothing written yet, or the destination seeks back)."""
        return self.written == 0 or self.start is not None

    def restart(self) -> None:
        """Forget a previous attempt's bytes."""
        if self.written and self.start is not None:
            self.file.seek(self.start)
            self.file.truncate()
        self._reset()

    def write(self, chunk: bytes) -> None:
        self.file.write(chunk)
        self._digest.update(chunk)
        self.written += len(chunk)
        if self.start is None and len(self._prefix) < HEADER_PREFIX_BYTES:
            self._prefix += chunk[: HEADER_PREFIX_BYTES - len(self._prefix)]

    def finish(self, response: httpx.Response) -> DownloadedResult:
        """The attempt's result; an incomplete body raises (as a transient error: the caller retries)."""
        announced = response.headers.get("Content-Length")
        length = int(announced) if announced and announced.isdigit() else None
        if length is not None and length != self.written:
            raise httpx.RemoteProtocolError(
                f"got {self.written} bytes of the announced {length}", request=response.request
            )
        return DownloadedResult(
            byte_count=self.written,
            sha256=self._digest.hexdigest(),
            content_type=response.headers.get("Content-Type"),
            content_length=length,
        )

    def inspect(self, inspector: ImageInspector) -> ImageInfo:
        """Run ``inspector`` on the written image (then leave the stream where the download ended)."""
        if self.start is None:
            return inspector(io.BytesIO(bytes(self._prefix)))
        self.file.flush()
        end = self.file.tell()
        self.file.seek(self.start)
        try:
            return inspector(self.file)
        finally:
            self.file.seek(end)

    def commit(self) -> None:
        """Publish a path destination (atomically); nothing to do for a stream."""
        if self.path is not None and self._partial is not None:
            self.file.close()
            os.replace(self._partial, self.path)
            self._partial = None

    def close(self) -> None:
        """Remove an uncommitted partial file."""
        if self._partial is not None:
            self.file.close()
            with contextlib.suppress(FileNotFoundError):
                self._partial.unlink()
            self._partial = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def judge_download_answer(response: httpx.Response) -> Outcome | None:
    """``None`` for a good answer (stream its body), a retry outcome, or raises a final HTTP error.

    The body of an error answer must have been read.
    """
    status = response.status_code
    if status < 400:
        return None
    if status in (408, 429) or status >= 500:
        return Outcome(
            Verdict.RETRY, f"HTTP {status}", retry_after_seconds(response.headers), status_code=status
        )
    raise http_error(response, api=False)


def next_download_delay(
    outcome: Outcome, *, target: DownloadTarget, attempt: int, policy: RetryPolicy, url: str
) -> float:
    """Seconds before the next attempt; raises when there is none (retries ran out, or no rewind)."""
    redacted = redact_url(url)
    if not target.can_restart:
        raise LeapiHTTPError(
            f"Download of {redacted} broke after {target.written} bytes ({outcome.reason}) and the "
            "destination cannot be rewound to retry it",
            status_code=outcome.status_code,
            method="GET",
            url=redacted,
            detail=outcome.reason,
        )
    if attempt >= policy.max_retries:
        raise LeapiHTTPError(
            f"Download of {redacted} failed after {attempt + 1} attempts: {outcome.reason}",
            status_code=outcome.status_code,
            method="GET",
            url=redacted,
            detail=outcome.reason,
        )
    delay = policy.delay(attempt, outcome.retry_after)
    log.warning(
        "LEAPI GET %s: %s; backoff %.2fs before retry %d/%d",
        redacted,
        outcome.reason,
        delay,
        attempt + 1,
        policy.max_retries,
    )
    return delay


def download_error(url: str, exc: httpx.HTTPError) -> LeapiHTTPError:
    """A non-transient httpx failure of a download (too many redirects, an undecodable body...)."""
    redacted = redact_url(url)
    return LeapiHTTPError(
        f"Download of {redacted} failed: {type(exc).__name__}: {redact_text(str(exc))}",
        status_code=None,
        method="GET",
        url=redacted,
        detail=type(exc).__name__,
    )


def verify_result(
    result: ResultFile,
    target: DownloadTarget,
    downloaded: DownloadedResult,
    inspect: ImageInspector | None = None,
) -> VerifiedResult:
    """Check a downloaded result against what the API reported in its ``output_object``.

    :param inspect: reads :class:`~leapi.imageinfo.ImageInfo` from the image (default: the pure-Python
        header reader); it raises ``ValueError`` or ``OSError`` for what is not a readable image.
    :raises LeapiResultVerificationError: empty, not a readable image, another size or format.
    """
    where = f"result {result.index} of pipeline {result.pipeline_id} ({redact_url(result.tmp_url)})"
    if downloaded.byte_count == 0:
        raise LeapiResultVerificationError(f"{where}: the download is empty")
    try:
        info = target.inspect(inspect or read_image_info)
    except (ValueError, OSError) as exc:
        raise LeapiResultVerificationError(f"{where}: not a readable image: {exc}") from exc
    if (result.width is not None and result.width != info.width) or (
        result.height is not None and result.height != info.height
    ):
        raise LeapiResultVerificationError(
            f"{where}: the image is {info.width}x{info.height} "
            f"but the API reported {result.width}x{result.height}"
        )
    if result.mime and info.mime and result.mime.lower() != info.mime:
        raise LeapiResultVerificationError(
            f"{where}: the image is {info.format} but the API reported {result.mime}"
        )
    mime = info.mime or result.mime or downloaded.content_type or "application/octet-stream"
    return VerifiedResult(
        file=result,
        byte_count=downloaded.byte_count,
        sha256=downloaded.sha256,
        width=info.width,
        height=info.height,
        format=info.format,
        mime=mime,
    )
