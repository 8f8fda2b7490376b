"""The result images of a DONE pipeline: deterministic names, temp-URL expiry, verified streaming download.

Shared by :class:`~leapi_provider.operators.leapi.LeapiDownloadResultOperator`,
:class:`~leapi_provider.transfers.leapi_to_s3.LeapiResultToS3Operator` and the catalog DAGs, so that every
copy of a result is named and checked the same way.
"""

from __future__ import annotations

import contextlib
import logging
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import PurePosixPath
from typing import IO, Any
from urllib.parse import parse_qs, unquote, urlsplit

from leapi.models import Pipeline, PipelineResult, PipelineStatus
from leapi_provider.exceptions import (
    LeapiError,
    LeapiHTTPError,
    LeapiResultExpiredError,
    LeapiResultMissingError,
    LeapiResultVerificationError,
)
from leapi_provider.hooks.leapi import LeapiHook, redact_url

#: The docs: a result is stored "for 24 hours once it's done".
TEMP_URL_LIFETIME = timedelta(hours=24)
#: Results up to this size stay in memory while being verified; larger ones spill to a temp file.
SPOOL_MAX_BYTES = 8 * 1024 * 1024
_UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9._-]+")
_PIL_FORMAT_MIME = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "TIFF": "image/tiff"}


@dataclass(frozen=True)
class ResultFile:
    """One downloadable result of a pipeline, with the name every copy of it gets."""

    pipeline_id: int
    #: Position in ``results`` (the position of its source URL in the request).
    index: int
    source_url: str | None
    #: ``marketplace`` / ``realestate`` / ``print`` (the op without its ``preset/`` prefix).
    preset: str
    file_name: str
    #: Signed: kept out of ``repr`` so that logging a result never leaks its credentials.
    tmp_url: str = field(repr=False)
    mime: str | None
    width: int | None
    height: int | None
    #: When the temp URL stops working: stated by the URL itself, else estimated from ``finished_at``.
    expires_at: datetime | None
    #: Whether ``expires_at`` comes from the URL (exact) or from the documented 24 h (an estimate).
    expiry_is_exact: bool


@dataclass(frozen=True)
class VerifiedResult:
    """A result downloaded and checked: complete (byte count), an image, of the size the API reported."""

    file: ResultFile
    byte_count: int
    sha256: str
    width: int
    height: int
    #: Pillow's name of the decoded format, e.g. ``JPEG``.
    format: str
    mime: str


def _safe(part: str, fallback: str) -> str:
    cleaned = _UNSAFE_NAME_CHARS.sub("-", part).strip("-.")
    return cleaned[:80] or fallback


def result_file_name(
    *,
    source_url: str | None,
    basename: str | None,
    preset: str,
    pipeline_id: int,
    index: int,
    count: int,
    ext: str,
) -> str:
    """``{source basename}__{preset}__{pipeline id}[-{index}].{ext}``: stable across re-runs of a task.

    The index is added only when a pipeline has several results (two sources may share a basename).
    """
    stem = basename
    if not stem and source_url:
        stem = PurePosixPath(unquote(urlsplit(source_url).path)).stem
    suffix = f"-{index}" if count > 1 else ""
    return (
        f"{_safe(stem or '', 'image')}__{_safe(preset, 'preset')}__{pipeline_id}{suffix}.{_safe(ext, 'bin')}"
    )


def temp_url_expiry(url: str) -> datetime | None:
    """The expiry a signed URL states: ``expires=<unix>`` (leapi-server) or ``X-Amz-Date`` + ``X-Amz-Expires``."""
    query = {k.lower(): v[0] for k, v in parse_qs(urlsplit(url).query).items() if v}
    if (expires := query.get("expires")) and expires.isdigit():
        return datetime.fromtimestamp(int(expires), tz=UTC)
    amz_date, amz_expires = query.get("x-amz-date"), query.get("x-amz-expires")
    if amz_date and amz_expires and amz_expires.isdigit():
        with contextlib.suppress(ValueError):
            signed = datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
            return signed + timedelta(seconds=int(amz_expires))
    return None


def _preset_of(pipeline: Pipeline) -> str:
    if pipeline.operations:
        return pipeline.operations[0].op.removeprefix("preset/")
    return "preset"


def _result_error(result: PipelineResult) -> str:
    return result.error or "no output_object in the result"


def result_files(pipeline: Pipeline) -> tuple[list[ResultFile], dict[int, str]]:
    """The downloadable results of a DONE pipeline, and the failed ones (index -> reason).

    :raises LeapiError: the pipeline is not DONE.
    """
    if pipeline.status is not PipelineStatus.DONE:
        status = pipeline.status.value if pipeline.status else "unknown"
        raise LeapiError(f"Pipeline {pipeline.id} is {status}, not DONE: it has no results to copy.")
    sources = pipeline.source_urls
    preset = _preset_of(pipeline)
    count = len(pipeline.results)
    files: list[ResultFile] = []
    failed: dict[int, str] = {}
    for index, result in enumerate(pipeline.results):
        output = result.output_object
        if not result.succeeded or output is None or not output.tmp_url:
            failed[index] = _result_error(result) if not result.succeeded else "no tmp_url in output_object"
            continue
        source_url = (result.input_object.url if result.input_object else None) or (
            sources[index] if index < len(sources) else None
        )
        ext = output.ext or (output.format or "").lower().replace("jpeg", "jpg") or "bin"
        exact = temp_url_expiry(output.tmp_url)
        estimated = pipeline.finished_at + TEMP_URL_LIFETIME if pipeline.finished_at else None
        if estimated is not None and estimated.tzinfo is None:
            estimated = estimated.replace(tzinfo=UTC)
        files.append(
            ResultFile(
                pipeline_id=pipeline.id,
                index=index,
                source_url=source_url,
                preset=preset,
                file_name=result_file_name(
                    source_url=source_url,
                    basename=result.input_object.basename if result.input_object else None,
                    preset=preset,
                    pipeline_id=pipeline.id,
                    index=index,
                    count=count,
                    ext=ext,
                ),
                tmp_url=output.tmp_url,
                mime=output.mime,
                width=output.width if output.width is not None else (output.size[0] if output.size else None),
                height=output.height
                if output.height is not None
                else (output.size[1] if output.size else None),
                expires_at=exact or estimated,
                expiry_is_exact=exact is not None,
            )
        )
    return files, failed


def _expired_error(result: ResultFile, detail: str) -> LeapiResultExpiredError:
    when = result.expires_at.strftime("%Y-%m-%d %H:%M:%S UTC") if result.expires_at else "an unknown time"
    qualifier = "" if result.expiry_is_exact else " (estimated: 24 h after the pipeline finished)"
    return LeapiResultExpiredError(
        f"Result {result.index} of pipeline {result.pipeline_id} ({result.source_url or 'unknown source'}) can no "
        f"longer be downloaded: its temporary URL expired at {when}{qualifier}; {detail}. LEAPI keeps results for "
        "24 hours. To recover, re-run the image: clear the task that submitted the pipeline (a new pipeline is "
        "created and charged) and then this task.",
        pipeline_id=result.pipeline_id,
        expired_at=result.expires_at,
    )


def inspect_image(fileobj: IO[bytes]) -> tuple[int, int, str]:
    """``(width, height, format)`` of the image in ``fileobj`` from its header (Pillow reads no pixels)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(fileobj) as image:
            return image.width, image.height, image.format or "unknown"
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise LeapiResultVerificationError(f"not a decodable image: {exc}") from exc


def download_verified(hook: LeapiHook, result: ResultFile, fileobj: IO[bytes]) -> VerifiedResult:
    """Stream ``result`` into ``fileobj`` (seekable) and check it before anyone else sees it.

    Checks: the URL has not expired (else :class:`LeapiResultExpiredError` naming the pipeline and the
    expiry), the body is complete (``Content-Length``), it decodes as an image whose size is the one the API
    reported in ``output_object``.
    """
    if result.expiry_is_exact and result.expires_at is not None and result.expires_at <= datetime.now(UTC):
        raise _expired_error(result, "it was not fetched")
    start = fileobj.tell()
    try:
        info = hook.download_result(result.tmp_url, fileobj)
    except LeapiHTTPError as exc:
        if exc.status_code in (403, 404, 410):
            raise _expired_error(result, f"the URL answered HTTP {exc.status_code}") from exc
        raise
    where = f"result {result.index} of pipeline {result.pipeline_id} ({redact_url(result.tmp_url)})"
    if info.byte_count == 0:
        raise LeapiResultVerificationError(f"{where}: the download is empty")
    end = fileobj.tell()
    fileobj.seek(start)
    try:
        width, height, image_format = inspect_image(fileobj)
    except LeapiResultVerificationError as exc:
        raise LeapiResultVerificationError(f"{where}: {exc}") from exc
    fileobj.seek(end)
    if (result.width, result.height) != (None, None) and (result.width, result.height) != (width, height):
        raise LeapiResultVerificationError(
            f"{where}: the image is {width}x{height} but the API reported {result.width}x{result.height}"
        )
    mime = _PIL_FORMAT_MIME.get(image_format, result.mime or info.content_type or "application/octet-stream")
    if result.mime and result.mime != mime and image_format in _PIL_FORMAT_MIME:
        raise LeapiResultVerificationError(
            f"{where}: the image is {image_format} but the API reported {result.mime}"
        )
    return VerifiedResult(
        file=result,
        byte_count=info.byte_count,
        sha256=info.sha256,
        width=width,
        height=height,
        format=image_format,
        mime=mime,
    )


@contextlib.contextmanager
def spooled_download(hook: LeapiHook, result: ResultFile) -> Iterator[tuple[VerifiedResult, IO[bytes]]]:
    """Download and verify ``result`` into a spooled temp file (memory up to 8 MiB, then disk).

    Yields the verification and the file, rewound, ready to be copied to its destination.
    """
    with tempfile.SpooledTemporaryFile(max_size=SPOOL_MAX_BYTES) as spool:
        verified = download_verified(hook, result, spool)
        spool.seek(0)
        yield verified, spool


def file_record(
    uri: str, verified: VerifiedResult | None, result: ResultFile, **known: Any
) -> dict[str, Any]:
    """One entry of the ``files`` XCom of a copy: where a result went and what it is.

    ``verified`` is ``None`` when an existing copy was kept; ``known`` then gives its ``sha256``/``bytes``.
    """
    record = {
        "uri": uri,
        "pipeline_id": result.pipeline_id,
        "index": result.index,
        "source_url": result.source_url,
        "preset": result.preset,
        "sha256": verified.sha256 if verified else known.get("sha256"),
        "bytes": verified.byte_count if verified else known.get("bytes"),
        "width": verified.width if verified else result.width,
        "height": verified.height if verified else result.height,
        "mime": verified.mime if verified else result.mime,
        "skipped_existing": verified is None,
    }
    return record


def raise_for_failed_results(
    pipeline_id: int, failed: dict[int, str], *, allow_partial: bool, log: logging.Logger | Any
) -> None:
    """Fail (after the good results were copied) when some images of a DONE pipeline produced no output."""
    if not failed:
        return
    text = "; ".join(f"result {index}: {reason}" for index, reason in sorted(failed.items())[:10])
    message = f"Pipeline {pipeline_id}: {len(failed)} image(s) produced no output ({text})"
    if allow_partial:
        log.warning("%s; copied the others (allow_partial=True)", message)
        return
    raise LeapiResultMissingError(message, pipeline_id=pipeline_id, failed_indexes=sorted(failed))
