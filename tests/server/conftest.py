"""Fixtures of the server tests: broken and hostile source files, and HTTP receivers."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import pytest


def png_bomb(width: int, height: int) -> bytes:
    """A valid, fully-encoded greyscale PNG of ``width`` x ``height`` zeros: tiny on disk, huge decoded."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (
            struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
        )

    compressor = zlib.compressobj(9)
    row = b"\x00" * (width + 1)  # filter byte + pixels
    block = row * 500
    parts = []
    for _ in range(height // 500):
        parts.append(compressor.compress(block))
    parts.append(compressor.compress(row * (height % 500)))
    parts.append(compressor.flush())
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b"")
    )


@pytest.fixture(scope="session")
def hostile_sources(source_dir: Path, source_server: str, source_photos: dict[str, str]) -> dict[str, str]:
    """URLs of files that must fail their own image cleanly: a 20000x20000 PNG bomb, a truncated JPEG,
    bytes that are no image, an empty file, and a URL that answers 404."""
    burger = (source_dir / "burger.jpg").read_bytes()
    files = {
        "bomb.png": png_bomb(20_000, 20_000),
        "truncated.jpg": burger[: len(burger) // 2],
        "not-an-image.jpg": b"<html><body>Not an image</body></html>\n" * 4,
        "empty.jpg": b"",
    }
    for name, content in files.items():
        (source_dir / name).write_bytes(content)
    urls = {name: f"{source_server}/{name}" for name in files}
    urls["missing.jpg"] = f"{source_server}/missing.jpg"
    return urls
