"""The result images of a DONE pipeline: what to download, what to call it, and until when it is there.

The docs: once DONE, each result's image is at ``results[i].output_object.tmp_url`` (``temp_url`` in the
prose), "we store it for 24 hours once it's done".
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from leapi.errors import LeapiError, LeapiResultExpiredError
from leapi.models import ImageObject, Pipeline, PipelineResult, PipelineStatus

#: The docs: a result is stored "for 24 hours once it's done".
TEMP_URL_LIFETIME = timedelta(hours=24)
_UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9._-]+")


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

    def is_expired(self, now: datetime | None = None) -> bool:
        """Whether the URL says it has expired (an estimated expiry is not trusted: the URL is tried)."""
        if not self.expiry_is_exact or self.expires_at is None:
            return False
        return self.expires_at <= (now or datetime.now(UTC))

    def expired_error(self, detail: str) -> LeapiResultExpiredError:
        """The error naming this result, its pipeline and the expiry; ``detail`` says how it was noticed."""
        when = self.expires_at.strftime("%Y-%m-%d %H:%M:%S UTC") if self.expires_at else "an unknown time"
        qualifier = "" if self.expiry_is_exact else " (estimated: 24 h after the pipeline finished)"
        return LeapiResultExpiredError(
            f"Result {self.index} of pipeline {self.pipeline_id} ({self.source_url or 'unknown source'}) can no "
            f"longer be downloaded: its temporary URL expired at {when}{qualifier}; {detail}. LEAPI keeps "
            "results for 24 hours. To recover, re-run the image: submit it again (a new pipeline is created and "
            "charged) and download that one.",
            pipeline_id=self.pipeline_id,
            expired_at=self.expires_at,
        )


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
    """``{source basename}__{preset}__{pipeline id}[-{index}].{ext}``: stable across re-runs.

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


def _failure_reason(result: PipelineResult, errors: list[Any], source_url: str | None) -> str:
    if result.succeeded:
        return "no tmp_url in output_object"
    if result.error:  # (a leapi-server extension)
        return result.error
    # The documented place: the pipeline's ``errors``, in whatever form; quote the entries naming the source.
    mentions = [str(entry) for entry in errors if source_url and source_url in str(entry)]
    return "no output_object in the result" + (f" ({'; '.join(mentions)})" if mentions else "")


def _estimated_expiry(pipeline: Pipeline) -> datetime | None:
    if pipeline.finished_at is None:
        return None
    finished = pipeline.finished_at
    # The docs write timestamps without an offset; they are UTC.
    return (finished if finished.tzinfo else finished.replace(tzinfo=UTC)) + TEMP_URL_LIFETIME


def _dimension(output: ImageObject, position: int) -> int | None:
    explicit = output.width if position == 0 else output.height
    if explicit is not None:
        return explicit
    return output.size[position] if output.size and len(output.size) > position else None


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
        source_url = (result.input_object.url if result.input_object else None) or (
            sources[index] if index < len(sources) else None
        )
        if not result.succeeded or output is None or not output.tmp_url:
            failed[index] = _failure_reason(result, pipeline.errors, source_url)
            continue
        ext = output.ext or (output.format or "").lower().replace("jpeg", "jpg") or "bin"
        exact = temp_url_expiry(output.tmp_url)
        name = result_file_name(
            source_url=source_url,
            basename=result.input_object.basename if result.input_object else None,
            preset=preset,
            pipeline_id=pipeline.id,
            index=index,
            count=count,
            ext=ext,
        )
        files.append(
            ResultFile(
                pipeline_id=pipeline.id,
                index=index,
                source_url=source_url,
                preset=preset,
                file_name=name,
                tmp_url=output.tmp_url,
                mime=output.mime,
                width=_dimension(output, 0),
                height=_dimension(output, 1),
                expires_at=exact or _estimated_expiry(pipeline),
                expiry_is_exact=exact is not None,
            )
        )
    return files, failed
