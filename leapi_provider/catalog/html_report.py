"""The run's HTML report: one self-contained page next to the result table, for a person to open.

``<results>/run_date=YYYY-MM-DD/_report-<run key>.html``: counts by status and preset, credits, errors
grouped by reason, and thumbnails (embedded as data URIs) linking to the written images. Links are
relative where the image lives in the same bucket (or folder tree) as the report, so the page works both
from the bucket (an S3 website or any HTTP front) and from a local copy of it; elsewhere they are the
image's URI.
"""

from __future__ import annotations

import base64
import html
import io
import logging
import posixpath
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

from leapi_provider.catalog.settings import CatalogSettings
from leapi_provider.catalog.storage import CatalogRun, storage_path
from leapi_provider.catalog.tally import ErrorReason, RunTally
from leapi_provider.manifests import ResultStatus

log = logging.getLogger(__name__)

#: Thumbnails on the report at most (each is one read of a written image).
REPORT_THUMBNAILS = 48
THUMBNAIL_PX = 160
#: Error reasons listed at most (each names :data:`~leapi_provider.catalog.tally.EXAMPLES_PER_REASON` image ids).
_MAX_REASONS = 50

_STYLE = """
body{font:14px system-ui,sans-serif;margin:24px;color:#222}
table{border-collapse:collapse;margin:8px 0 20px}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}
th:first-child,td:first-child{text-align:left}.reason{text-align:left;max-width:60em}
.thumbs{display:flex;flex-wrap:wrap;gap:12px}.thumb{width:170px;font-size:12px;word-break:break-all}
"""


def report_uri(settings: CatalogSettings, run: CatalogRun) -> str:
    """Where the run's report goes, beside the partition of its rows."""
    return f"{settings.results.rstrip('/')}/run_date={run.run_date}/_report-{run.key}.html"


def relative_link(target: str, page: str) -> str:
    """``target`` as a link from the page at ``page``: relative when both share a bucket (or a disk)."""
    to, at = urlsplit(target), urlsplit(page)
    if (to.scheme or "file") != (at.scheme or "file") or to.netloc != at.netloc:
        return target
    return posixpath.relpath(to.path, posixpath.dirname(at.path))


def _thumbnail(settings: CatalogSettings, uri: str) -> str | None:
    from PIL import Image

    try:
        data = storage_path(uri, settings.aws_conn_id).read_bytes()
        with Image.open(io.BytesIO(data)) as image:
            image.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
            buffer = io.BytesIO()
            image.convert("RGB").save(buffer, format="JPEG", quality=80)
    except (OSError, ValueError) as exc:
        log.warning("report: no thumbnail for %s (%s)", uri, exc)
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def _status_table(by_status_and_preset: Sequence[Sequence[Any]]) -> str:
    """``[status, preset, count]`` triples as a table of statuses by preset."""
    counts = {(status, preset or "(none)"): n for status, preset, n in by_status_and_preset}
    presets = sorted({p for _, p in counts})
    statuses = sorted({s for s, _ in counts})
    head = "".join(f"<th>{html.escape(p)}</th>" for p in presets)
    rows = []
    for status in statuses:
        cells = [counts.get((status, name), 0) for name in presets]
        rows.append(
            f"<tr><td>{html.escape(status)}</td>{''.join(f'<td>{n}</td>' for n in cells)}<td>{sum(cells)}</td></tr>"
        )
    return f"<table><tr><th>status</th>{head}<th>total</th></tr>{''.join(rows)}</table>"


def _errors_table(ranked: Sequence[tuple[str, ErrorReason]]) -> str:
    if not ranked:
        return "<p>No errors.</p>"
    rows = [
        f"<tr><td class=reason>{html.escape(reason[:500])}</td><td>{found.count}</td>"
        f"<td class=reason>{html.escape(', '.join(found.examples))}</td></tr>"
        for reason, found in ranked[:_MAX_REASONS]
    ]
    more = f"<p>... and {len(ranked) - _MAX_REASONS} more reasons.</p>" if len(ranked) > _MAX_REASONS else ""
    return f"<table><tr><th>reason</th><th>images</th><th>e.g.</th></tr>{''.join(rows)}</table>{more}"


def render_report(
    *,
    run: CatalogRun,
    summary: Mapping[str, Any],
    errors: Sequence[tuple[str, ErrorReason]],
    page_uri: str,
    contact_sheet_uri: str | None,
    thumbnails: Sequence[tuple[Mapping[str, Any], str]],
) -> str:
    """The report's HTML (no I/O).

    :param summary: the run's summary (:meth:`RunTally.summary <leapi_provider.catalog.tally.RunTally.summary>`).
    :param errors: error reasons, the most frequent first.
    :param thumbnails: ``(result row, data URI)`` pairs.
    """
    sheet = (
        f'<p><a href="{html.escape(relative_link(contact_sheet_uri, page_uri))}">Contact sheet</a> '
        "(before/after, 1:1 zoomed crops)</p>"
        if contact_sheet_uri
        else "<p>No new contact sheet: this run enhanced no image.</p>"
    )
    cards = []
    for row, data_uri in thumbnails:
        link = html.escape(relative_link(row["output_uri"], page_uri))
        caption = f"{row['image_id']} · {row['preset']} · {row['output_width']}x{row['output_height']}"
        cards.append(
            f'<div class=thumb><a href="{link}"><img src="{data_uri}" alt="{html.escape(str(row["image_id"]))}">'
            f"</a><br>{html.escape(caption)}</div>"
        )
    enhanced = summary["by_status"].get(ResultStatus.DONE.value, 0)
    title = f"LEAPI catalog run {run.dag_run_id}"
    return f"""<!doctype html>
<html lang=en><head><meta charset=utf-8><title>{html.escape(title)}</title><style>{_STYLE}</style></head>
<body><h1>{html.escape(title)}</h1>
<p>DAG {html.escape(run.dag_id)} · run date {html.escape(run.run_date)} · run key {html.escape(run.key)}</p>
<p><b>{summary["rows"]}</b> manifest rows · <b>{enhanced}</b> enhanced ·
<b>{summary["credits_used"]}</b> credits used by this run</p>
{sheet}
<h2>Rows by status and preset</h2>{_status_table(summary["by_status_and_preset"])}
<h2>Errors by reason</h2>{_errors_table(errors)}
<h2>Enhanced images</h2><div class=thumbs>{"".join(cards) or "<p>None this run.</p>"}</div>
</body></html>
"""


def report_thumbnails(settings: CatalogSettings, tally: RunTally) -> list[tuple[dict[str, Any], str]]:
    """``(result row, data URI)`` of up to :data:`REPORT_THUMBNAILS` ``done`` images, the first by preset
    and image id (an image that cannot be read is left out, logged)."""
    rows = tally.picks().slice(0, REPORT_THUMBNAILS).to_pylist()
    with ThreadPoolExecutor(max_workers=8) as pool:
        data_uris = list(pool.map(lambda row: _thumbnail(settings, row["output_uri"]), rows))
    return [(row, uri) for row, uri in zip(rows, data_uris, strict=True) if uri]


def write_html_report(
    settings: CatalogSettings,
    run: CatalogRun,
    tally: RunTally,
    summary: Mapping[str, Any],
    *,
    contact_sheet_uri: str | None,
    thumbnails: Sequence[tuple[Mapping[str, Any], str]] | None = None,
) -> str:
    """Render the run's report and write it atomically beside the result table; returns its URI.

    :param thumbnails: what :func:`report_thumbnails` returns (read here when not given).
    """
    from leapi_provider import manifests

    page_uri = report_uri(settings, run)
    page = render_report(
        run=run,
        summary=summary,
        errors=tally.ranked_errors(),
        page_uri=page_uri,
        contact_sheet_uri=contact_sheet_uri,
        thumbnails=report_thumbnails(settings, tally) if thumbnails is None else thumbnails,
    )
    return manifests.write_bytes_atomic(page.encode(), storage_path(page_uri, settings.aws_conn_id))
