"""Hostile and unusual source images, made in memory (no files shipped): truncated, corrupt and bomb files of
each supported format, and the odd-but-valid kinds a catalog contains (CMYK, 16-bit, alpha, EXIF-rotated,
animated, multi-page)."""

from __future__ import annotations

import io
import struct

import cv2
import numpy as np
from PIL import Image

from devkit.sources import sample_photo

FORMATS = ("JPEG", "PNG", "TIFF", "BMP", "WEBP")
#: Red and blue as the frames of the animated samples: the output's colour tells which frame was used.
RED, BLUE = (220, 30, 30), (30, 30, 220)


def encoded(image: Image.Image, image_format: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **options)
    return buffer.getvalue()


def photo(size: tuple[int, int] = (150, 100)) -> Image.Image:
    return sample_photo("chelsea", size=size)


def truncated(image_format: str) -> bytes:
    data = encoded(photo(), image_format)
    return data[: len(data) // 2]


def header_only(image_format: str) -> bytes:
    """The first 40 bytes: the magic number is right, everything after it is missing."""
    return encoded(photo(), image_format)[:40]


def scrambled(image_format: str) -> bytes:
    """Magic number and first header bytes intact, the rest random (a disk or transfer gone bad)."""
    data = bytearray(encoded(photo(), image_format))
    noise = np.random.default_rng(7).integers(0, 256, len(data) - 64, dtype=np.uint8).tobytes()
    data[64:] = noise
    return bytes(data)


def jpeg_bomb(side: int = 60_000) -> bytes:
    """A real small JPEG whose frame header (SOF0) claims ``side`` x ``side`` pixels."""
    data = bytearray(encoded(photo(), "JPEG", quality=80))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", side, side)
    return bytes(data)


def bmp_bomb(side: int = 50_000) -> bytes:
    """A BMP header for a ``side`` x ``side`` 24-bit image followed by a few bytes of pixels."""
    info = struct.pack("<IiiHHIIiiII", 40, side, side, 1, 24, 0, 0, 2835, 2835, 0, 0)
    pixels = b"\x00" * 1024
    header = b"BM" + struct.pack("<IHHI", 14 + len(info) + len(pixels), 0, 0, 14 + len(info))
    return header + info + pixels


def tiff_bomb(side: int = 60_000) -> bytes:
    """A small TIFF whose ImageWidth / ImageLength tags claim ``side`` x ``side``."""
    data = bytearray(encoded(Image.new("L", (8, 8)), "TIFF"))
    assert data[:4] == b"II*\x00"
    (ifd,) = struct.unpack_from("<I", data, 4)
    (count,) = struct.unpack_from("<H", data, ifd)
    for entry in range(count):
        offset = ifd + 2 + 12 * entry
        tag, kind = struct.unpack_from("<HH", data, offset)
        if tag in (256, 257):  # ImageWidth, ImageLength
            if kind == 3:
                struct.pack_into("<H", data, offset + 8, side)
            else:
                struct.pack_into("<I", data, offset + 8, side)
    return bytes(data)


def webp_bomb(side: int = 16_384) -> bytes:
    """An extended WEBP (VP8X) whose canvas claims ``side`` x ``side`` (the format's maximum)."""
    vp8x = struct.pack("<I", 0) + (side - 1).to_bytes(3, "little") + (side - 1).to_bytes(3, "little")
    frame = encoded(Image.new("RGB", (16, 16)), "WEBP")[12:]  # the small image's own VP8/VP8L chunk
    body = b"WEBP" + b"VP8X" + struct.pack("<I", len(vp8x)) + vp8x + frame
    return b"RIFF" + struct.pack("<I", len(body)) + body


def cmyk_jpeg() -> bytes:
    return encoded(photo().convert("CMYK"), "JPEG", quality=90)


def grey16_png() -> bytes:
    """16-bit greyscale at 40000/65535 (about 156 of 255 once scaled, 255 if clipped)."""
    return encoded(Image.fromarray(np.full((100, 150), 40_000, dtype=np.uint16)), "PNG")


def rgb16_png() -> bytes:
    """16-bit-per-channel RGB (Pillow cannot write it; OpenCV can)."""
    rgb = np.asarray(photo(), dtype=np.uint16) * 257
    ok, data = cv2.imencode(".png", rgb[..., ::-1].copy())
    assert ok
    return data.tobytes()


def grey16_tiff() -> bytes:
    return encoded(Image.fromarray(np.full((100, 150), 40_000, dtype=np.uint16)), "TIFF")


def rgba_png() -> bytes:
    """Left half opaque red, right half fully transparent (black underneath)."""
    pixels = np.zeros((100, 150, 4), dtype=np.uint8)
    pixels[:, :75] = (*RED, 255)
    return encoded(Image.fromarray(pixels, "RGBA"), "PNG")


def exif_rotated_jpeg() -> bytes:
    """Stored 150x100 with EXIF orientation 6 (rotate 90 degrees clockwise to display): shown 100x150.
    A red block in the stored top-left corner ends up top-right once displayed."""
    image = Image.new("RGB", (150, 100), (240, 240, 240))
    image.paste(Image.new("RGB", (40, 40), RED), (0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6
    return encoded(image, "JPEG", quality=95, exif=exif.tobytes())


def _frames() -> list[Image.Image]:
    return [Image.new("RGB", (150, 100), RED), Image.new("RGB", (150, 100), BLUE)]


def animated_webp() -> bytes:
    first, second = _frames()
    return encoded(first, "WEBP", save_all=True, append_images=[second], duration=100, loop=0, lossless=True)


def animated_png() -> bytes:
    first, second = _frames()
    return encoded(first, "PNG", save_all=True, append_images=[second], duration=100, loop=0)


def multipage_tiff() -> bytes:
    first, second = _frames()
    return encoded(first, "TIFF", save_all=True, append_images=[second])


def animated_gif() -> bytes:
    first, second = _frames()
    return encoded(first, "GIF", save_all=True, append_images=[second], duration=100, loop=0)
