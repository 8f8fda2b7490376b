"""Width, height and format of an image from its header, in pure Python (no Pillow, no pixels decoded).

Covers the formats the LEAPI FAQ lists: JPEG, PNG, WEBP (lossy, lossless, extended), TIFF (classic and
BigTIFF) and BMP. Used to check a downloaded result against what the API reported in ``output_object``:
a truncated or mislabelled file, or one of another size, is caught without an imaging library. What it
does not check is whether the pixel data decodes; pass your own ``inspect`` callable to the download
methods for that (see ``packages/leapi/README.md``).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO

#: MIME type of each format name (the names Pillow uses too).
FORMAT_MIME = {
    "JPEG": "image/jpeg",
    "PNG": "image/png",
    "WEBP": "image/webp",
    "TIFF": "image/tiff",
    "BMP": "image/bmp",
}

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: JPEG start-of-frame markers (baseline, progressive, lossless, arithmetic...): all but C4, C8, CC.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
#: JPEG markers without a length field.
_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})
_TIFF_WIDTH, _TIFF_HEIGHT = 256, 257
#: TIFF field types that hold a dimension: SHORT and LONG (and LONG8 in BigTIFF).
_TIFF_INT_TYPES = {3: "H", 4: "I", 16: "Q"}


@dataclass(frozen=True)
class ImageInfo:
    """What an image header says."""

    width: int
    height: int
    #: ``JPEG``, ``PNG``, ``WEBP``, ``TIFF`` or ``BMP`` (for a custom inspector: any name).
    format: str

    @property
    def mime(self) -> str | None:
        return FORMAT_MIME.get(self.format.upper())


#: A function reading an :class:`ImageInfo` from a seekable binary file positioned at the image's start;
#: it raises ``ValueError`` for what is not a readable image.
ImageInspector = Callable[[IO[bytes]], ImageInfo]


class _Reader:
    """Reads exact byte counts; a short read is a truncated header."""

    def __init__(self, fileobj: IO[bytes]) -> None:
        self.file = fileobj
        self.start = fileobj.tell()

    def read(self, size: int) -> bytes:
        data = self.file.read(size)
        if len(data) != size:
            raise ValueError("truncated image header")
        return data

    def seek(self, offset: int) -> None:
        """Seek to ``offset`` from the image's start."""
        self.file.seek(self.start + offset)

    def skip(self, size: int) -> None:
        self.file.seek(size, 1)


def read_image_info(fileobj: IO[bytes]) -> ImageInfo:
    """``ImageInfo`` of the image starting at ``fileobj``'s position (seekable; it is left moved).

    :raises ValueError: not one of the supported formats, or its header is truncated or invalid.
    """
    reader = _Reader(fileobj)
    head = fileobj.read(16)
    reader.seek(0)
    if head.startswith(_PNG_SIGNATURE):
        info = _png(reader)
    elif head.startswith(b"\xff\xd8"):
        info = _jpeg(reader)
    elif head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        info = _webp(reader)
    elif head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        info = _tiff(reader)
    elif head.startswith(b"BM"):
        info = _bmp(reader)
    elif not head:
        raise ValueError("empty file")
    else:
        raise ValueError(f"not a JPEG, PNG, WEBP, TIFF or BMP image (starts with {head[:8]!r})")
    if info.width <= 0 or info.height <= 0:
        raise ValueError(f"invalid {info.format} header: {info.width}x{info.height}")
    return info


def _png(reader: _Reader) -> ImageInfo:
    reader.skip(8)
    _length, chunk, width, height = struct.unpack(">I4sII", reader.read(16))
    if chunk != b"IHDR":
        raise ValueError("invalid PNG: the first chunk is not IHDR")
    return ImageInfo(width, height, "PNG")


def _jpeg(reader: _Reader) -> ImageInfo:
    reader.skip(2)
    while True:
        if reader.read(1) != b"\xff":
            raise ValueError("invalid JPEG: expected a marker")
        marker = reader.read(1)[0]
        while marker == 0xFF:  # fill bytes before a marker
            marker = reader.read(1)[0]
        if marker in _JPEG_STANDALONE:
            continue
        if marker in (0xD9, 0xDA):
            raise ValueError("invalid JPEG: no frame header before the image data")
        (length,) = struct.unpack(">H", reader.read(2))
        if length < 2:
            raise ValueError("invalid JPEG: bad segment length")
        if marker in _JPEG_SOF:
            _precision, height, width = struct.unpack(">BHH", reader.read(5))
            return ImageInfo(width, height, "JPEG")
        reader.skip(length - 2)


def _webp(reader: _Reader) -> ImageInfo:
    reader.skip(12)
    chunk = reader.read(4)
    reader.skip(4)  # chunk size
    if chunk == b"VP8 ":
        frame = reader.read(10)
        if frame[3:6] != b"\x9d\x01\x2a":
            raise ValueError("invalid WEBP: bad VP8 start code")
        width, height = struct.unpack("<HH", frame[6:10])
        return ImageInfo(width & 0x3FFF, height & 0x3FFF, "WEBP")
    if chunk == b"VP8L":
        data = reader.read(5)
        if data[0] != 0x2F:
            raise ValueError("invalid WEBP: bad VP8L signature")
        bits = int.from_bytes(data[1:5], "little")
        return ImageInfo((bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1, "WEBP")
    if chunk == b"VP8X":
        data = reader.read(10)
        width = int.from_bytes(data[4:7], "little") + 1
        height = int.from_bytes(data[7:10], "little") + 1
        return ImageInfo(width, height, "WEBP")
    raise ValueError(f"invalid WEBP: unknown first chunk {chunk!r}")


def _tiff(reader: _Reader) -> ImageInfo:
    order = "<" if reader.read(2) == b"II" else ">"
    (version,) = struct.unpack(order + "H", reader.read(2))
    big = version == 43
    if big:
        reader.skip(4)  # offset byte size (8) and padding
        (offset,) = struct.unpack(order + "Q", reader.read(8))
    else:
        (offset,) = struct.unpack(order + "I", reader.read(4))
    reader.seek(offset)
    count_format, entry_size = ("Q", 20) if big else ("H", 12)
    (count,) = struct.unpack(order + count_format, reader.read(struct.calcsize(count_format)))
    found: dict[int, int] = {}
    for _ in range(min(count, 4096)):
        entry = reader.read(entry_size)
        tag, kind = struct.unpack(order + "HH", entry[:4])
        if tag in (_TIFF_WIDTH, _TIFF_HEIGHT) and kind in _TIFF_INT_TYPES:
            value_at = 12 if big else 8
            fmt = order + _TIFF_INT_TYPES[kind]
            found[tag] = struct.unpack(fmt, entry[value_at : value_at + struct.calcsize(fmt)])[0]
        if len(found) == 2:
            return ImageInfo(found[_TIFF_WIDTH], found[_TIFF_HEIGHT], "TIFF")
    raise ValueError("invalid TIFF: no ImageWidth/ImageLength in the first directory")


def _bmp(reader: _Reader) -> ImageInfo:
    reader.skip(14)
    (header_size,) = struct.unpack("<I", reader.read(4))
    if header_size == 12:  # BITMAPCOREHEADER (OS/2)
        width, height = struct.unpack("<HH", reader.read(4))
    elif header_size >= 40:
        width, height = struct.unpack("<ii", reader.read(8))
    else:
        raise ValueError(f"invalid BMP: DIB header of {header_size} bytes")
    # A negative height means the rows are stored top-down.
    return ImageInfo(width, abs(height), "BMP")
