"""What a person or a marketplace sees of a run: the before/after contact sheet and the feed export."""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import httpx
import pyarrow as pa
import pyarrow.compute as pc

from leapi_provider import manifests
from leapi_provider.catalog.settings import CatalogSettings
from leapi_provider.catalog.storage import CatalogRun, RunFolder, storage_path, uri_of
from leapi_provider.manifests import ResultStatus

log = logging.getLogger(__name__)


def contact_sheet_png(pairs: Sequence[tuple[str, bytes, bytes]], *, cell: int = 240) -> bytes:
    """A PNG of before/after pairs side by side, each pair shown at the same size so detail compares.

    :param pairs: ``(label, source bytes, enhanced bytes)``.
    """
    from PIL import Image, ImageDraw, ImageOps

    shown = []
    for label, before_bytes, after_bytes in pairs:
        with Image.open(io.BytesIO(after_bytes)) as after, Image.open(io.BytesIO(before_bytes)) as before:
            # Same display box for both: the source is scaled up to the enhanced image's shape.
            after_rgb = ImageOps.contain(after.convert("RGB"), (cell, cell), Image.Resampling.LANCZOS)
            before_rgb = before.convert("RGB").resize(after_rgb.size, Image.Resampling.BICUBIC)
        shown.append((label, before_rgb, after_rgb))
    label_height, pad = 16, 8
    columns = 2 if len(shown) > 3 else 1
    rows = [shown[i : i + columns] for i in range(0, len(shown), columns)]
    row_heights = [max(after.height for _, _, after in row) + label_height + pad for row in rows]
    pair_width = 2 * cell + pad
    sheet = Image.new("RGB", (columns * (pair_width + pad) + pad, sum(row_heights) + pad), "white")
    draw = ImageDraw.Draw(sheet)
    y0 = pad
    for row, height in zip(rows, row_heights, strict=True):
        for column, (label, before_rgb, after_rgb) in enumerate(row):
            x0 = pad + column * (pair_width + pad)
            sheet.paste(before_rgb, (x0, y0))
            sheet.paste(after_rgb, (x0 + cell + pad, y0))
            draw.text((x0, y0 + after_rgb.height + 2), f"before | after   {label}"[:90], fill="black")
        y0 += height
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def contact_sheet(settings: CatalogSettings, done: pa.Table) -> bytes | None:
    count = settings.contact_sheet_images
    done = done.filter(pc.is_valid(done["output_uri"]))
    if count <= 0 or done.num_rows == 0:
        return None
    # A few images of each preset, in a stable order.
    picks = done.sort_by([("preset", "ascending"), ("image_id", "ascending")]).to_pylist()
    chosen: list[dict[str, Any]] = []
    for preset in sorted({r["preset"] for r in picks}):
        chosen += [r for r in picks if r["preset"] == preset][: max(1, count // 3)]
    chosen = chosen[:count]
    from leapi_provider.catalog.sources import read_source_bytes
    from leapi_provider.hooks.leapi import shared_tls_context

    pairs = []
    with httpx.Client(timeout=30, follow_redirects=True, verify=shared_tls_context()) as client:
        for row in chosen:
            try:
                before = read_source_bytes(row["source_url"], aws_conn_id=settings.aws_conn_id, http=client)
                after = storage_path(row["output_uri"], settings.aws_conn_id).read_bytes()
            except (httpx.HTTPError, OSError) as exc:
                log.warning("contact sheet: skipping %s (%s)", row["image_id"], exc)
                continue
            label = (
                f"{row['image_id']} {row['preset']}: {row['input_width']}x{row['input_height']}"
                f" -> {row['output_width']}x{row['output_height']}"
            )
            pairs.append((label, before, after))
    return contact_sheet_png(pairs) if pairs else None


def write_feed_export(
    settings: CatalogSettings, table: pa.Table, folder: RunFolder, run: CatalogRun
) -> list[str]:
    """Final image URL per ``image_id`` (``done`` and ``skipped_unchanged`` rows), as Parquet and CSV."""
    assert settings.export
    rows = table.filter(
        pc.and_(
            pc.is_in(
                table["status"], pa.array([ResultStatus.DONE.value, ResultStatus.SKIPPED_UNCHANGED.value])
            ),
            pc.is_valid(table["output_uri"]),
        )
    ).sort_by("manifest_row")
    attributes: dict[int, Any] = {}
    if folder.attributes.exists():
        extra = manifests.read_parquet(folder.attributes)
        attributes = dict(
            zip(extra["manifest_row"].to_pylist(), extra["attributes"].to_pylist(), strict=True)
        )
    images_root = uri_of(storage_path(settings.images, settings.aws_conn_id)).rstrip("/")
    feed = []
    for row in rows.to_pylist():
        uri = row["output_uri"]
        bucket, _, key = uri.split("://", 1)[-1].partition("/")
        url = (
            settings.feed_url_template.format(key=key, bucket=bucket, uri=uri)
            if settings.feed_url_template
            else uri
        )
        attrs = attributes.get(row["manifest_row"])
        feed.append(
            {
                "image_id": row["image_id"],
                "image_url": url,
                "preset": row["preset"],
                "width": row["output_width"],
                "height": row["output_height"],
                "format": row["output_format"],
                "bytes": row["output_bytes"],
                "sha256": row["output_sha256"],
                "status": row["status"],
                "enhanced_at": row["finished_at"],
                "attributes": json.dumps(dict(attrs) if isinstance(attrs, list) else attrs, default=str)
                if attrs is not None
                else None,
            }
        )
    log.info("Feed export: %d images (images under %s)", len(feed), images_root)
    schema = pa.schema(
        [("image_id", pa.string()), ("image_url", pa.string()), ("preset", pa.string()), ("width", pa.int32()),
         ("height", pa.int32()), ("format", pa.string()), ("bytes", pa.int64()), ("sha256", pa.string()),
         ("status", pa.string()), ("enhanced_at", pa.timestamp("us", tz="UTC")), ("attributes", pa.string())]
    )  # fmt: skip
    export_table = pa.Table.from_pylist(feed, schema=schema)
    csv_buffer = io.StringIO()
    writer = csv.DictWriter(csv_buffer, fieldnames=schema.names)
    writer.writeheader()
    for item in feed:
        writer.writerow(
            {
                k: ("" if v is None else v.isoformat() if isinstance(v, datetime) else v)
                for k, v in item.items()
            }
        )
    csv_bytes = csv_buffer.getvalue().encode()
    export_root = storage_path(settings.export, settings.aws_conn_id)
    written = []
    for target, stem in (
        (export_root / f"run_date={run.run_date}", f"feed-{run.key}"),
        (export_root / "latest", "feed"),
    ):
        written.append(manifests.write_parquet_atomic(export_table, target / f"{stem}.parquet"))
        written.append(manifests.write_bytes_atomic(csv_bytes, target / f"{stem}.csv"))
    return written
