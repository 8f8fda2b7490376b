"""What a person or a marketplace sees of a run: the before/after contact sheet (with 1:1 zoomed crops)
and the feed export. The HTML report is :mod:`leapi_provider.catalog.html_report`."""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Self

import httpx
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from leapi_provider import manifests
from leapi_provider.catalog.settings import CatalogSettings
from leapi_provider.catalog.storage import CatalogRun, RunFolder, read_parquet_if_exists, storage_path, uri_of
from leapi_provider.manifests import ResultStatus
from leapi_provider.manifests.locations import AtomicUpload

if TYPE_CHECKING:
    from PIL import Image

log = logging.getLogger(__name__)


#: Side of the square 1:1 crops of the contact sheet's zoom section, in pixels of the enhanced image.
ZOOM_CROP_PX = 192


@dataclass(frozen=True)
class SheetImage:
    """One ``done`` image on the contact sheet: its label, source and result bytes, and zoom label."""

    label: str
    before: bytes
    after: bytes
    #: Set for the image of a preset that also gets a zoomed 1:1 crop (one per preset).
    zoom_label: str | None = None


def zoom_crops(
    before: Image.Image, after: Image.Image, *, size: int = ZOOM_CROP_PX
) -> tuple[Image.Image, Image.Image]:
    """The same region of both images at the enhanced image's scale (1:1 on the result): the source's is
    upscaled with bicubic, as a plain resize would do it, so the two show what the enhancement added.

    The region is the ``size`` square of the result with the most detail (highest standard deviation of
    its grey levels), so the crop shows texture, not a flat background.
    """
    import numpy as np
    from PIL import Image

    side = min(size, after.width, after.height)
    grey = np.asarray(after.convert("L"), dtype=np.float32)
    best, best_std = (0, 0), -1.0
    step = max(side // 2, 1)
    for top in range(0, after.height - side + 1, step):
        for left in range(0, after.width - side + 1, step):
            std = float(grey[top : top + side, left : left + side].std())
            if std > best_std:
                best, best_std = (left, top), std
    left, top = best
    after_crop = after.crop((left, top, left + side, top + side))
    scale_x, scale_y = before.width / after.width, before.height / after.height
    region = (left * scale_x, top * scale_y, (left + side) * scale_x, (top + side) * scale_y)
    before_crop = before.resize((side, side), Image.Resampling.BICUBIC, box=region)
    return before_crop, after_crop


def contact_sheet_png(images: Sequence[SheetImage], *, cell: int = 240) -> bytes:
    """A PNG of before/after pairs side by side, each pair shown at the same size so detail compares,
    then a zoom section: for the images with a ``zoom_label``, 1:1 crops of the result beside the same
    region of the source upscaled with bicubic (:func:`zoom_crops`).
    """
    from PIL import Image, ImageDraw, ImageOps

    shown, zooms = [], []
    for item in images:
        with Image.open(io.BytesIO(item.after)) as after, Image.open(io.BytesIO(item.before)) as before:
            after_full, before_full = after.convert("RGB"), before.convert("RGB")
        # Same display box for both: the source is scaled up to the enhanced image's shape.
        after_rgb = ImageOps.contain(after_full, (cell, cell), Image.Resampling.LANCZOS)
        before_rgb = before_full.resize(after_rgb.size, Image.Resampling.BICUBIC)
        shown.append((f"before | after   {item.label}", before_rgb, after_rgb))
        if item.zoom_label:
            zooms.append((item.zoom_label, *zoom_crops(before_full, after_full)))
    label_height, pad = 16, 8
    columns = 2 if len(shown) > 3 else 1
    width_each = 2 * max(cell, ZOOM_CROP_PX if zooms else 0) + pad
    rows = [shown[i : i + columns] for i in range(0, len(shown), columns)]
    rows += [zooms[i : i + columns] for i in range(0, len(zooms), columns)]
    row_heights = [max(after.height for _, _, after in row) + label_height + pad for row in rows]
    sheet = Image.new("RGB", (columns * (width_each + pad) + pad, sum(row_heights) + pad), "white")
    draw = ImageDraw.Draw(sheet)
    y0 = pad
    for row, height in zip(rows, row_heights, strict=True):
        for column, (label, before_rgb, after_rgb) in enumerate(row):
            x0 = pad + column * (width_each + pad)
            sheet.paste(before_rgb, (x0, y0))
            sheet.paste(after_rgb, (x0 + before_rgb.width + pad, y0))
            draw.text((x0, y0 + after_rgb.height + 2), label[:100], fill="black")
        y0 += height
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def _zoom_label(row: Mapping[str, Any]) -> str:
    level = json.loads(row["operation_json"] or "{}").get("restoration_level", "default")
    return (
        f"1:1 zoom, {row['preset']} (restoration level {level}): bicubic {row['input_width']}x"
        f"{row['input_height']} | LEAPI {row['output_width']}x{row['output_height']}"
    )


def sheet_images(settings: CatalogSettings, done: pa.Table, *, count: int) -> list[SheetImage]:
    """Up to ``count`` ``done`` images, a few of each preset, with their bytes; the first of each preset
    gets a zoom. Unreadable ones are skipped (logged)."""
    done = done.filter(pc.is_valid(done["output_uri"]))
    if count <= 0 or done.num_rows == 0:
        return []
    # A few images of each preset, in a stable order.
    picks = done.sort_by([("preset", "ascending"), ("image_id", "ascending")]).to_pylist()
    chosen: list[dict[str, Any]] = []
    for preset in sorted({r["preset"] for r in picks}):
        chosen += [r for r in picks if r["preset"] == preset][: max(1, count // 3)]
    from leapi.transport import shared_tls_context
    from leapi_provider.catalog.sources import read_source_bytes

    images: list[SheetImage] = []
    zoomed: set[str] = set()
    with httpx.Client(timeout=30, follow_redirects=True, verify=shared_tls_context()) as client:
        for row in chosen[:count]:
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
            zoom = None if row["preset"] in zoomed else _zoom_label(row)
            zoomed.add(row["preset"])
            images.append(SheetImage(label, before, after, zoom))
    return images


def contact_sheet(settings: CatalogSettings, done: pa.Table) -> bytes | None:
    images = sheet_images(settings, done, count=settings.contact_sheet_images)
    return contact_sheet_png(images) if images else None


#: The feed export's columns (Parquet types; the CSV has the same columns, as text).
FEED_SCHEMA = pa.schema(
    [("image_id", pa.string()), ("image_url", pa.string()), ("preset", pa.string()), ("width", pa.int32()),
     ("height", pa.int32()), ("format", pa.string()), ("bytes", pa.int64()), ("sha256", pa.string()),
     ("status", pa.string()), ("enhanced_at", pa.timestamp("us", tz="UTC")), ("attributes", pa.string())]
)  # fmt: skip
#: The feed export's columns taken as they are from the result table.
_FEED_COLUMNS = {
    "image_id": "image_id",
    "preset": "preset",
    "width": "output_width",
    "height": "output_height",
    "format": "output_format",
    "bytes": "output_bytes",
    "sha256": "output_sha256",
    "status": "status",
    "enhanced_at": "finished_at",
}


class FeedExportWriter:
    """The feed export: the final image URL per ``image_id`` (``done`` and ``skipped_unchanged`` rows), as
    Parquet and CSV, the run's files and ``latest``'s, written as the result rows stream past
    (:meth:`write` each part, then :meth:`commit`; leaving the ``with`` block uncommitted removes them).
    """

    def __init__(self, settings: CatalogSettings, folder: RunFolder, run: CatalogRun):
        assert settings.export
        self.settings = settings
        # (the manifest's extra columns, when it had any: a table of manifest_row and attributes)
        self._attributes = read_parquet_if_exists(folder.attributes)
        export_root = storage_path(settings.export, settings.aws_conn_id)
        self._parquet: list[tuple[AtomicUpload, pq.ParquetWriter]] = []
        self._csv: list[AtomicUpload] = []
        for target, stem in (
            (export_root / f"run_date={run.run_date}", f"feed-{run.key}"),
            (export_root / "latest", "feed"),
        ):
            parquet = AtomicUpload(*manifests.resolve_location(target / f"{stem}.parquet"))
            self._parquet.append((parquet, pq.ParquetWriter(parquet.handle, FEED_SCHEMA, compression="zstd")))
            self._csv.append(AtomicUpload(*manifests.resolve_location(target / f"{stem}.csv")))
        header = _feed_csv(FEED_SCHEMA.empty_table(), header=True)
        for upload in self._csv:
            upload.handle.write(header)
        self.rows = 0

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        for upload, writer in self._parquet:
            writer.close()
            upload.discard()
        for upload in self._csv:
            upload.discard()
        self._parquet, self._csv = [], []

    def write(self, results: pa.Table) -> None:
        """Add the feed's rows of a part of the result rows (in their order)."""
        rows = results.filter(
            pc.and_(
                pc.is_in(
                    results["status"],
                    pa.array([ResultStatus.DONE.value, ResultStatus.SKIPPED_UNCHANGED.value]),
                ),
                pc.is_valid(results["output_uri"]),
            )
        )
        if rows.num_rows == 0:
            return
        columns = {name: rows[source] for name, source in _FEED_COLUMNS.items()}
        columns["image_url"] = pa.array(
            _feed_urls(self.settings, rows["output_uri"].to_pylist()), pa.string()
        )
        columns["attributes"] = self._feed_attributes(rows["manifest_row"])
        export_table = pa.table([columns[name].cast(FEED_SCHEMA.field(name).type) for name in FEED_SCHEMA.names],
                                schema=FEED_SCHEMA)  # fmt: skip
        csv_bytes = _feed_csv(export_table, header=False)
        for (_, writer), upload in zip(self._parquet, self._csv, strict=True):
            writer.write_table(export_table)
            upload.handle.write(csv_bytes)
        self.rows += export_table.num_rows

    def commit(self) -> list[str]:
        """Publish the four files at once: the run's Parquet and CSV, then ``latest``'s; their URIs."""
        publishes: list[Callable[[], str]] = []
        for (parquet, writer), csv_upload in zip(self._parquet, self._csv, strict=True):
            writer.close()
            publishes += [parquet.publish, csv_upload.publish]
        self._parquet, self._csv = [], []
        images_root = uri_of(storage_path(self.settings.images, self.settings.aws_conn_id)).rstrip("/")
        log.info("Feed export: %d images (images under %s)", self.rows, images_root)
        with ThreadPoolExecutor(max_workers=len(publishes)) as pool:
            return list(pool.map(lambda publish: publish(), publishes))

    def _feed_attributes(self, manifest_rows: pa.ChunkedArray) -> pa.Array:
        """Each row's manifest attributes as a JSON object (null without any)."""
        if self._attributes is None:
            return pa.nulls(len(manifest_rows), pa.string())
        position = pc.index_in(manifest_rows, value_set=self._attributes["manifest_row"].combine_chunks())
        found = self._attributes["attributes"].take(position)
        as_json = [
            json.dumps(dict(attrs) if isinstance(attrs, list) else attrs, default=str)
            if attrs is not None
            else None
            for attrs in found.to_pylist()
        ]
        return pa.array(as_json, pa.string())


def _feed_urls(settings: CatalogSettings, uris: list[str]) -> list[str]:
    """The public URL of each result object (``feed_url_template``), or its URI."""
    template = settings.feed_url_template
    if not template:
        return uris
    urls = []
    for uri in uris:
        bucket, _, key = uri.split("://", 1)[-1].partition("/")
        urls.append(template.format(key=key, bucket=bucket, uri=uri))
    return urls


def _feed_csv(export_table: pa.Table, *, header: bool) -> bytes:
    """Rows of the feed as CSV (``csv`` module dialect: quoted where needed, CRLF), times in ISO 8601,
    after the header line when ``header``."""
    text_columns = []
    for name in export_table.column_names:
        values = export_table[name].to_pylist()
        if name == "enhanced_at":
            values = [None if v is None else v.isoformat() for v in values]
        text_columns.append(["" if v is None else v for v in values])
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    if header:
        writer.writerow(export_table.column_names)
    writer.writerows(zip(*text_columns, strict=True))
    return buffer.getvalue().encode()
