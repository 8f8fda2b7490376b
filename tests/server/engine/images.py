"""Small generated test images (deterministic) and helpers to encode / decode them."""

from __future__ import annotations

import io

import cv2
import numpy as np
from PIL import Image


def scene(width: int = 128, height: int = 96, seed: int = 0) -> np.ndarray:
    """A photo-like sRGB uint8 image: smooth shading, coloured shapes with hard edges, fine texture."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack(
        [
            110 + 60 * np.sin(xx / width * 3.1),
            120 + 50 * np.cos(yy / height * 2.3),
            100 + 40 * np.sin((xx + yy) / (width + height) * 4.0),
        ],
        axis=2,
    )
    image = base.astype(np.uint8).copy()
    for _ in range(6):
        colour = tuple(int(c) for c in rng.integers(20, 235, 3))
        centre = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        if rng.random() < 0.5:
            cv2.circle(
                image, centre, int(rng.integers(6, max(7, width // 5))), colour, -1, lineType=cv2.LINE_AA
            )
        else:
            corner = (centre[0] + int(rng.integers(8, 40)), centre[1] + int(rng.integers(8, 30)))
            cv2.rectangle(image, centre, corner, colour, -1)
    texture = rng.normal(0, 6, (height, width, 1)).astype(np.float32)
    return np.clip(image.astype(np.float32) + texture, 0, 255).astype(np.uint8)


def encode(pixels: np.ndarray | Image.Image, fmt: str, **params: object) -> bytes:
    image = pixels if isinstance(pixels, Image.Image) else Image.fromarray(pixels)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def pixels(data: bytes, mode: str = "RGB") -> np.ndarray:
    return np.asarray(decode(data).convert(mode))


def linear_rgb_icc_profile() -> bytes:
    """A minimal ICC v2 display profile: sRGB primaries with a linear (gamma 1.0) tone curve.

    Pixel value 128 in such a file is half the light of white, which is 188 in sRGB: a decoder that
    ignores the profile leaves it at 128.
    """
    import struct

    def s15(value: float) -> bytes:
        return struct.pack(">i", round(value * 65536))

    def xyz(x: float, y: float, z: float) -> bytes:
        return b"XYZ " + b"\0" * 4 + s15(x) + s15(y) + s15(z)

    text = b"linear sRGB test profile\0"
    desc = b"desc" + b"\0" * 4 + struct.pack(">I", len(text)) + text + b"\0" * 8 + b"\0" * 3 + b"\0" * 67
    curve = b"curv" + b"\0" * 4 + struct.pack(">I", 1) + struct.pack(">H", 0x0100) + b"\0\0"
    tags = [
        (b"desc", desc),
        (b"cprt", b"text" + b"\0" * 4 + b"none\0" + b"\0" * 3),
        (b"wtpt", xyz(0.9642, 1.0, 0.8249)),
        (b"rXYZ", xyz(0.4361, 0.2225, 0.0139)),
        (b"gXYZ", xyz(0.3851, 0.7169, 0.0971)),
        (b"bXYZ", xyz(0.1431, 0.0606, 0.7141)),
        (b"rTRC", curve),
        (b"gTRC", curve),
        (b"bTRC", curve),
    ]
    offset = 128 + 4 + 12 * len(tags)
    table, body = b"", b""
    for signature, data in tags:
        table += signature + struct.pack(">II", offset + len(body), len(data))
        body += data + b"\0" * (-len(data) % 4)
    size = offset + len(body)
    header = (
        struct.pack(">I", size)
        + b"lcms"
        + struct.pack(">I", 0x02100000)
        + b"mntrRGB XYZ "
        + struct.pack(">6H", 2024, 1, 1, 0, 0, 0)
        + b"acsp"
        + b"\0" * 24
        + struct.pack(">I", 0)  # perceptual intent
        + s15(0.9642)
        + s15(1.0)
        + s15(0.8249)
        + b"\0" * 4
        + b"\0" * 16
        + b"\0" * 28
    )
    assert len(header) == 128
    return header + struct.pack(">I", len(tags)) + table + body


def neutral_scene(width: int = 160, height: int = 120, seed: int = 0) -> np.ndarray:
    """A scene lit by white light: grey shading, a white and a black object, coloured objects in
    complementary pairs (so no colour dominates), texture."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    grey = 70 + 90 * (xx / width) * (0.6 + 0.4 * yy / height)
    image = np.repeat(grey[..., None], 3, axis=2)
    cv2.rectangle(image, (5, 5), (30, 25), (225, 225, 225), -1)
    cv2.rectangle(image, (width - 30, height - 25), (width - 5, height - 5), (15, 15, 15), -1)
    for _ in range(3):
        colour = rng.integers(40, 215, 3).astype(np.float32)
        for tint in (colour, 255 - colour):
            centre = (int(rng.integers(20, width - 20)), int(rng.integers(20, height - 20)))
            cv2.circle(image, centre, int(rng.integers(8, 16)), tuple(float(c) for c in tint), -1)
    image += rng.normal(0, 4, (height, width, 1)).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8)
