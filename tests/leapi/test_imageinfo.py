"""The pure-Python image header reader against what Pillow writes (and reads) for every supported format."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from leapi.imageinfo import ImageInfo, read_image_info


def encoded(
    image_format: str, size: tuple[int, int] = (123, 45), mode: str = "RGB", **options: object
) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size).save(buffer, format=image_format, **options)
    return buffer.getvalue()


def exif_and_icc_jpeg() -> bytes:
    """A JPEG whose frame header comes after a large EXIF and ICC segment (as cameras write them)."""
    image = Image.new("RGB", (640, 480), (10, 20, 30))
    exif = Image.Exif()
    exif[0x010E] = "x" * 30_000  # ImageDescription
    profile = b"\0" * 20_000
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif, icc_profile=profile)
    return buffer.getvalue()


CASES = {
    "jpeg": (encoded("JPEG"), ImageInfo(123, 45, "JPEG")),
    "progressive jpeg": (encoded("JPEG", progressive=True), ImageInfo(123, 45, "JPEG")),
    "grey jpeg": (encoded("JPEG", mode="L"), ImageInfo(123, 45, "JPEG")),
    "jpeg after 50 kB of metadata": (exif_and_icc_jpeg(), ImageInfo(640, 480, "JPEG")),
    "png": (encoded("PNG"), ImageInfo(123, 45, "PNG")),
    "png with alpha": (encoded("PNG", mode="RGBA"), ImageInfo(123, 45, "PNG")),
    "lossy webp": (encoded("WEBP", quality=60), ImageInfo(123, 45, "WEBP")),
    "lossless webp": (encoded("WEBP", lossless=True), ImageInfo(123, 45, "WEBP")),
    "extended webp (alpha)": (encoded("WEBP", mode="RGBA", exif=b"Exif\0\0"), ImageInfo(123, 45, "WEBP")),
    "little-endian tiff": (encoded("TIFF"), ImageInfo(123, 45, "TIFF")),
    "big-endian tiff": (encoded("TIFF", mode="I;16B"), ImageInfo(123, 45, "TIFF")),
    "bigtiff": (encoded("TIFF", big_tiff=True), ImageInfo(123, 45, "TIFF")),
    "large tiff": (encoded("TIFF", size=(70_000, 1), mode="L"), ImageInfo(70_000, 1, "TIFF")),
    "bmp": (encoded("BMP"), ImageInfo(123, 45, "BMP")),
}


@pytest.mark.parametrize("name", list(CASES))
def test_dimensions_and_format_match_pillow(name):
    data, expected = CASES[name]
    with Image.open(io.BytesIO(data)) as image:
        assert (image.width, image.height, image.format) == (expected.width, expected.height, expected.format)
    assert read_image_info(io.BytesIO(data)) == expected
    assert expected.mime == Image.MIME[expected.format]


def test_big_endian_tiff_is_really_big_endian_and_a_top_down_bmp_has_its_height():
    assert encoded("TIFF", mode="I;16B")[:4] == b"MM\x00*"
    assert encoded("TIFF", big_tiff=True)[:4] == b"II+\x00"
    bmp = bytearray(encoded("BMP"))
    bmp[22:26] = (-45).to_bytes(4, "little", signed=True)  # negative height: rows stored top-down
    assert read_image_info(io.BytesIO(bytes(bmp))) == ImageInfo(123, 45, "BMP")


def test_reading_starts_where_the_stream_is():
    stream = io.BytesIO(b"prefix" + encoded("PNG"))
    stream.seek(6)
    assert read_image_info(stream) == ImageInfo(123, 45, "PNG")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"GIF89a" + b"\0" * 20, "not a JPEG, PNG, WEBP, TIFF or BMP"),
        (b"<html>not found</html>", "not a JPEG"),
        (encoded("PNG")[:20], "truncated"),
        (encoded("JPEG")[:100], "truncated"),
        (exif_and_icc_jpeg()[:40_000], "truncated"),
        (encoded("WEBP")[:22], "truncated"),
        (encoded("TIFF")[:10], "truncated"),
        (b"\xff\xd8\xff\xda\x00\x02", "no frame header"),
    ],
)
def test_what_is_not_a_readable_image_is_refused(data, message):
    with pytest.raises(ValueError, match=message):
        read_image_info(io.BytesIO(data))
