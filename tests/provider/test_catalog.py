"""The catalog job's helpers: source fingerprints, key templates, run identity, contact sheet, settings."""

from __future__ import annotations

import hashlib
import http.server
import io
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from devkit.sources import serve_http
from leapi_provider.catalog.fingerprints import source_fingerprints
from leapi_provider.catalog.report import SheetImage, contact_sheet_png, zoom_crops
from leapi_provider.catalog.settings import CatalogSettings, check_key_template, safe_key_part
from leapi_provider.catalog.storage import CatalogRun
from leapi_provider.catalog.transfer import object_key

BODY = b"\xff\xd8 not really a jpeg but bytes to hash"


class _Handler(http.server.BaseHTTPRequestHandler):
    """``/etag``: ETag; ``/modified``: Last-Modified; ``/plain``: no validator; ``/no-head``: 405 on HEAD;
    ``/gone``: 404; ``/broken``: 500."""

    def log_message(self, format, *args):
        pass

    def _answer(self, with_body: bool) -> None:
        path = self.path
        if path == "/gone":
            self.send_response(404)
            self.end_headers()
            return
        if path == "/broken":
            self.send_response(500)
            self.end_headers()
            return
        if path == "/no-head" and not with_body:
            self.send_response(405)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(BODY)))
        if path == "/etag":
            self.send_header("ETag", '"v1"')
        if path == "/modified":
            self.send_header("Last-Modified", "Wed, 01 Apr 2026 10:00:00 GMT")
        self.end_headers()
        if with_body:
            self.wfile.write(BODY)

    def do_HEAD(self):
        self._answer(False)

    def do_GET(self):
        self._answer(True)


@pytest.fixture(scope="module")
def origin() -> Iterator[str]:
    with serve_http(_Handler) as url:
        yield url


def test_fingerprints_prefer_validators_then_hash_the_content(origin: str) -> None:
    digest = hashlib.sha256(BODY).hexdigest()
    urls = [f"{origin}/{p}" for p in ("etag", "modified", "plain", "no-head", "gone", "broken", "etag")]
    found = source_fingerprints(urls)
    assert found[f"{origin}/etag"].fingerprint == 'etag:"v1"'
    assert (
        found[f"{origin}/modified"].fingerprint
        == f"last-modified:Wed, 01 Apr 2026 10:00:00 GMT;length:{len(BODY)}"
    )
    assert found[f"{origin}/plain"].fingerprint == f"sha256:{digest}"
    assert found[f"{origin}/no-head"].fingerprint == f"sha256:{digest}"
    assert found[f"{origin}/etag"].content_length == len(BODY)
    gone, broken = found[f"{origin}/gone"], found[f"{origin}/broken"]
    assert (gone.fingerprint, gone.gone, gone.error) == (None, True, "HTTP 404")
    assert (broken.fingerprint, broken.gone, broken.error) == (None, False, "HTTP 500")
    assert len(found) == 6  # each distinct URL once


def test_content_mode_always_hashes(origin: str) -> None:
    found = source_fingerprints([f"{origin}/etag"], mode="content")
    assert found[f"{origin}/etag"].fingerprint == f"sha256:{hashlib.sha256(BODY).hexdigest()}"


def test_unreachable_source_has_no_fingerprint() -> None:
    from devkit.server import free_port

    found = source_fingerprints([f"http://127.0.0.1:{free_port()}/x.jpg"], timeout=2)
    (only,) = found.values()
    assert only.fingerprint is None and not only.gone and "ConnectError" in only.error


def test_key_templates() -> None:
    check_key_template("feed/{preset}/{image_id}/{sha256:.16}.{ext}")
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['sku'\]"):
        check_key_template("{sku}/{image_id}.{ext}")
    with pytest.raises(ValueError, match=r"must contain \{image_id\}"):
        check_key_template("{preset}/{sha256}.{ext}")
    key = object_key(
        "x/{preset}/{image_id}/{sha256:.4}.{ext}",
        image_id="a/b c",
        preset="print",
        sha256="abcdef",
        ext="jpg",
    )
    assert key == "x/print/a%2Fb%20c/abcd.jpg"
    assert safe_key_part("..") == "%2E%2E" and safe_key_part("sku-1_A.b") == "sku-1_A.b"


def test_run_key_is_stable_for_a_logical_date() -> None:
    day = datetime(2026, 4, 1, tzinfo=UTC)
    first = CatalogRun.of("dag", "manual__one", day)
    again = CatalogRun.of("dag", "manual__two", day)  # re-triggered for the same logical date
    other = CatalogRun.of("dag", "manual__one", datetime(2026, 4, 2, tzinfo=UTC))
    assert first.key == again.key != other.key
    assert first.run_date == "2026-04-01"
    no_date = CatalogRun.of("dag", "asset_triggered__x", None, run_after=day)
    assert no_date.run_date == "2026-04-01" and no_date.key != first.key


def test_settings_are_validated() -> None:
    base = {"manifest": "m", "results": "r", "images": "i"}
    connections = {"leapi_conn_id": "leapi_default", "aws_conn_id": "aws_default"}
    assert CatalogSettings.from_params({**base, "export": "", "unrelated": 1}, **connections).export is None
    with pytest.raises(ValueError, match="change_detection"):
        CatalogSettings(**base, change_detection="mtime")
    with pytest.raises(ValueError, match="preset defaults for 'print'"):
        CatalogSettings(**base, preset_defaults={"print": {"quality": 101}})
    with pytest.raises(ValueError, match="key_template"):
        CatalogSettings(**base, key_template="{preset}.{ext}")


def _jpeg(size: tuple[int, int], color: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="JPEG")
    return buffer.getvalue()


def test_contact_sheet_shows_pairs_at_the_same_size() -> None:
    pairs = [SheetImage(f"img-{i}", _jpeg((60, 40), "red"), _jpeg((120, 80), "blue")) for i in range(5)]
    with Image.open(io.BytesIO(contact_sheet_png(pairs, cell=100))) as sheet:
        assert sheet.format == "PNG"
        assert sheet.width == 2 * (2 * 100 + 8 + 8) + 8  # two pairs a row
        rgb = sheet.convert("RGB")
        # First pair: source (scaled up to the result's display size) then result, both 100x67.
        assert rgb.getpixel((8 + 50, 8 + 30))[0] > 200  # red source
        assert rgb.getpixel((8 + 100 + 8 + 50, 8 + 30))[2] > 200  # blue result
        assert rgb.getpixel((8 + 50, 8 + 70))[:3] != (255, 0, 0)  # below the image: no image (height 67)


def _textured(size: tuple[int, int], square: tuple[int, int, int, int]) -> Image.Image:
    """White, with a black and white checkerboard (4 px) inside ``square``: the only detail."""
    image = Image.new("RGB", size, "white")
    left, top, right, bottom = square
    for x in range(left, right):
        for y in range(top, bottom):
            if (x // 4 + y // 4) % 2:
                image.putpixel((x, y), (0, 0, 0))
    return image


def test_zoom_crops_show_the_same_detailed_region_at_one_to_one() -> None:
    after = _textured((400, 300), (260, 150, 400, 300))  # detail in the bottom right only
    before = after.resize((200, 150), Image.Resampling.LANCZOS)

    before_crop, after_crop = zoom_crops(before, after, size=96)

    assert before_crop.size == after_crop.size == (96, 96)
    pixels = np.asarray(after_crop.convert("L")).ravel().tolist()
    assert min(pixels) < 30 and max(pixels) > 225, "the crop is on the checkerboard, not the background"
    # 1:1: the result's pixels themselves (a checkerboard of 4 px squares, not resampled).
    assert sorted(set(pixels)) == [0, 255]
    # The source's crop is the same region, upscaled: the same mean grey, blurred (bicubic).
    mean = sum(pixels) / len(pixels)
    before_pixels = np.asarray(before_crop.convert("L")).ravel().tolist()
    assert abs(sum(before_pixels) / len(before_pixels) - mean) < 20
    assert len(set(before_pixels)) > 2


def test_contact_sheet_adds_a_labelled_zoom_per_marked_image() -> None:
    after = _textured((400, 300), (0, 0, 400, 300))
    buffers = []
    for picture in (after.resize((200, 150)), after):
        buffer = io.BytesIO()
        picture.save(buffer, format="PNG")
        buffers.append(buffer.getvalue())
    plain = SheetImage("a", buffers[0], buffers[1])
    zoomed = SheetImage("a", buffers[0], buffers[1], zoom_label="1:1 zoom, marketplace (restoration level 4)")

    with Image.open(io.BytesIO(contact_sheet_png([plain], cell=100))) as without_zoom:
        height_without = without_zoom.height
    with Image.open(io.BytesIO(contact_sheet_png([zoomed], cell=100))) as with_zoom:
        assert with_zoom.height == height_without + 192 + 16 + 8  # one row of 192 px crops, its label
        assert with_zoom.width == 2 * 192 + 8 + 8 + 8


def test_presigned_urls_are_mapped_back_to_their_uris_and_others_redacted() -> None:
    from leapi_provider.catalog.sources import restore_source_uris, split_s3_uri

    v4 = (
        "https://acme.s3.eu-west-1.amazonaws.com/photos/a.jpg?X-Amz-Algorithm=AWS4-HMAC-SHA256"
        "&X-Amz-Credential=AKIA%2F20260701&X-Amz-Date=20260701T000000Z&X-Amz-Expires=7200&X-Amz-Signature=abc"
    )
    v2 = "http://127.0.0.1:9000/acme/b.jpg?AWSAccessKeyId=testing&Signature=xyz%3D&Expires=1796080919"
    text = f"could not fetch {v4}: 403; also '{v2}'"

    restored = restore_source_uris(text, {v4: "s3://acme/photos/a.jpg"})

    assert restored == (
        "could not fetch s3://acme/photos/a.jpg: 403; also 'http://127.0.0.1:9000/acme/b.jpg?<redacted>'"
    )
    assert split_s3_uri("s3://acme/photos/a b.jpg") == ("acme", "photos/a b.jpg")
    with pytest.raises(ValueError, match="not an s3://bucket/key URI"):
        split_s3_uri("s3://acme/")


def test_html_report_counts_groups_errors_and_links_thumbnails(tmp_path: Path) -> None:
    from leapi_provider import manifests
    from leapi_provider.catalog.html_report import relative_link, report_uri, write_html_report
    from leapi_provider.catalog.tally import RunTally

    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (64, 48), "green").save(images / "a.jpg")
    rows = [
        {"image_id": "a", "preset": "marketplace", "status": "done", "output_uri": f"file://{images}/a.jpg",
         "output_width": 64, "output_height": 48},
        {"image_id": "b", "preset": "print", "status": "error", "error": "pipeline 7 ERROR: <broken> source"},
        {"image_id": "c", "preset": "print", "status": "error", "error": "pipeline 7 ERROR: <broken> source"},
        {"image_id": "d", "preset": None, "status": "rejected_row", "error": "unknown preset 'instagram'"},
    ]  # fmt: skip
    table = manifests.conform_results(rows)
    settings = CatalogSettings(manifest="m", results=str(tmp_path / "results"), images=str(images))
    run = CatalogRun.of("dag", "run-1", datetime(2026, 7, 1, tzinfo=UTC))

    tally = RunTally(picks_per_preset=4)
    tally.add(table.slice(0, 2))
    tally.add(table.slice(2))

    uri = write_html_report(settings, run, tally, tally.summary(credits_used=3), contact_sheet_uri=None)

    page = (tmp_path / "results" / "run_date=2026-07-01" / f"_report-{run.key}.html").read_text()
    assert uri.endswith(f"_report-{run.key}.html") and report_uri(settings, run).endswith(
        uri.rsplit("/", 1)[-1]
    )
    assert "<b>4</b> manifest rows · <b>1</b> enhanced ·\n<b>3</b> credits used" in page
    assert (
        "<tr><td>error</td><td>0</td><td>0</td><td>2</td><td>2</td></tr>" in page
    )  # (none), marketplace, print
    assert (
        "<td class=reason>pipeline 7 ERROR: &lt;broken&gt; source</td><td>2</td><td class=reason>b, c</td>"
        in page
    )
    assert 'href="../../images/a.jpg"><img src="data:image/jpeg;base64,' in page
    assert "No new contact sheet: this run enhanced no image." in page
    assert relative_link("s3://cdn/x/a.jpg", "s3://catalog/results/r.html") == "s3://cdn/x/a.jpg"
    assert relative_link("s3://b/cdn/a.jpg", "s3://b/results/run_date=1/r.html") == "../../cdn/a.jpg"
