"""Decoding any supported input to sRGB pixels, and encoding the output.

Everything that touches file formats lives here; the stages in between see ``HxWx3`` uint8 sRGB arrays
(plus an optional ``HxW`` alpha plane).
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import ExifTags, Image, ImageCms, ImageOps, JpegImagePlugin

from leapi.models import ImageFormat
from leapi_server.engine.types import EngineError, ImageInfo

#: format name -> (mime, ext) as reported in ``input_object`` / ``output_object``.
FORMATS: dict[str, tuple[str, str]] = {
    "JPEG": ("image/jpeg", "jpg"),
    "PNG": ("image/png", "png"),
    "TIFF": ("image/tiff", "tiff"),
    "BMP": ("image/bmp", "bmp"),
    "WEBP": ("image/webp", "webp"),
}

#: PNG zlib level: 1 is ~5x faster than Pillow's default 6 for a few percent larger files.
PNG_COMPRESS_LEVEL = 1
#: From this JPEG quality on, chroma is kept at full resolution (4:4:4); below it 4:2:0 saves bytes.
FULL_CHROMA_FROM_QUALITY = 90

# The IJG (libjpeg) standard luminance table, row-major; encoders scale it by quality.
_IJG_LUMA = np.array(
    [
        16, 11, 10, 16, 24, 40, 51, 61,
        12, 12, 14, 19, 26, 58, 60, 55,
        14, 13, 16, 24, 40, 57, 69, 56,
        14, 17, 22, 29, 51, 87, 80, 62,
        18, 22, 37, 56, 68, 109, 103, 77,
        24, 35, 55, 64, 81, 104, 113, 92,
        49, 64, 78, 87, 103, 121, 120, 101,
        72, 92, 95, 98, 112, 100, 103, 99,
    ],
    dtype=np.float64,
)  # fmt: skip
_ZIGZAG = np.array(
    [
        0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5,
        12, 19, 26, 33, 40, 48, 41, 34, 27, 20, 13, 6, 7, 14, 21, 28,
        35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51,
        58, 59, 52, 45, 38, 31, 39, 46, 53, 60, 61, 54, 47, 55, 62, 63,
    ]
)  # fmt: skip


def _ijg_table(quality: int) -> np.ndarray:
    scale = 5000 / quality if quality < 50 else 200 - 2 * quality
    return np.clip(np.floor((_IJG_LUMA * scale + 50) / 100), 1, 255)


_IJG_TABLES = np.stack([_ijg_table(q) for q in range(1, 101)])


def sniff_format(head: bytes) -> str | None:
    """The format named by the magic bytes at the start of a file, or ``None`` if not one we read."""
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "TIFF"
    if head.startswith(b"BM"):
        return "BMP"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    return None


def estimate_jpeg_quality(quantization: dict[int, list[int]] | None) -> int | None:
    """The IJG quality (1-100) whose luminance table is nearest the file's, or ``None`` if unknown.

    Nearly every encoder (libjpeg, Pillow, OpenCV, Photoshop's "save for web" is close) scales the IJG
    table, so this tells how hard an input was compressed. Tables are compared in both natural and
    zigzag order, since readers disagree on which they return.
    """
    if not quantization or 0 not in quantization:
        return None
    table = np.asarray(list(quantization[0]), dtype=np.float64)
    if table.size != 64:
        return None
    errors = np.minimum(
        np.abs(np.log(_IJG_TABLES) - np.log(np.maximum(table, 1))).mean(axis=1),
        np.abs(np.log(_IJG_TABLES[:, _ZIGZAG]) - np.log(np.maximum(table, 1))).mean(axis=1),
    )
    return int(np.argmin(errors)) + 1


@dataclass(frozen=True)
class DecodedImage:
    """Pixels in sRGB, the input's description, and what the file says about its own compression."""

    rgb: np.ndarray  # HxWx3 uint8, sRGB, orientation applied
    alpha: np.ndarray | None  # HxW uint8, None when opaque
    info: ImageInfo
    jpeg_quality: int | None  # estimated from the quantisation tables; None when not a JPEG
    chroma_subsampled: bool = False  # a 4:2:0 JPEG: its chroma only has half the resolution
    #: Where the JPEG's 8x8 block boundaries are in the displayed image, ``(x, y)``: just before columns
    #: ``x + 8k`` and rows ``y + 8k``; ``None`` when not a JPEG (or decoded at reduced scale).
    block_grid: tuple[int, int] | None = None


def read_header(data: bytes, max_pixels: int) -> tuple[Image.Image, str]:
    """Open lazily (header only) and refuse decompression bombs before any pixel is decoded."""
    fmt = sniff_format(data[:16])
    if fmt is None:
        raise EngineError("unsupported or unrecognised image data: expected JPEG, PNG, TIFF, BMP or WEBP")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=[fmt])
    except Image.DecompressionBombError as exc:
        raise EngineError(f"the {fmt} image is too large to process: {exc}") from None
    except Image.UnidentifiedImageError:
        raise EngineError(f"cannot read the {fmt} image: its header is corrupt or truncated") from None
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types for malformed headers
        raise EngineError(f"cannot read the {fmt} image: {_describe(exc)}") from None
    width, height = image.size
    if width < 1 or height < 1:
        raise EngineError(f"the {fmt} image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise EngineError(
            f"the {fmt} image is {width}x{height} = {width * height / 1e6:.1f} MP, over the limit of "
            f"{max_pixels / 1e6:.1f} MP"
        )
    return image, fmt


def decode(data: bytes, *, max_pixels: int, draft_size: tuple[int, int] | None = None) -> DecodedImage:
    """Decode to sRGB uint8 with EXIF orientation applied.

    ``draft_size`` lets a JPEG decode at 1/2, 1/4 or 1/8 scale directly (libjpeg's DCT scaling) when the
    output is that much smaller; the result is still at least ``draft_size``.
    """
    image, fmt = read_header(data, max_pixels)
    quality = estimate_jpeg_quality(getattr(image, "quantization", None)) if fmt == "JPEG" else None
    subsampled = fmt == "JPEG" and image.mode != "L" and JpegImagePlugin.get_sampling(image) == 2
    grid = _block_grid(image) if fmt == "JPEG" and draft_size is None else None
    interpret = _interpretation(image)
    try:
        if fmt != "JPEG":
            # Before reading EXIF: PNG's getexif() loads the pixels itself, and _quarter_turned() swallows
            # its errors; a second load() then "succeeds" with an all-black image from a corrupt file.
            image.load()
        width, height = _displayed_size(image)
        if draft_size is not None and fmt == "JPEG":
            image.draft(None, draft_size[::-1] if _quarter_turned(image) else draft_size)
        image.load()
        image = _apply_orientation(image)
        rgb, alpha = _to_srgb(image)
    except EngineError:
        raise
    except Exception as exc:  # noqa: BLE001 - truncated data, broken chunks, bad EXIF: the image's own fault
        raise EngineError(f"cannot decode the {fmt} image: {_describe(exc)}") from None
    mime, ext = FORMATS[fmt]
    info = ImageInfo(format=fmt, mime=mime, ext=ext, width=width, height=height, interpret=interpret)
    return DecodedImage(
        rgb=rgb, alpha=alpha, info=info, jpeg_quality=quality, chroma_subsampled=subsampled, block_grid=grid
    )


def _apply_orientation(image: Image.Image) -> Image.Image:
    # A damaged EXIF block is common and no reason to fail the image: it is then shown as stored.
    try:
        return ImageOps.exif_transpose(image)
    except Exception:  # noqa: BLE001 - Pillow raises several types for malformed EXIF
        return image


def _block_grid(image: Image.Image) -> tuple[int, int]:
    """The stored grid (boundaries at multiples of 8) carried through the EXIF orientation transform:
    an axis that gets mirrored has its boundaries at ``size % 8`` instead."""
    try:
        orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception:  # noqa: BLE001 - unreadable EXIF: decode() reports it if it matters
        orientation = 1
    width, height = image.size
    w, h = width % 8, height % 8
    return {1: (0, 0), 2: (w, 0), 3: (w, h), 4: (0, h), 5: (0, 0), 6: (h, 0), 7: (h, w), 8: (0, w)}.get(
        orientation, (0, 0)
    )


def _describe(exc: Exception) -> str:
    text = str(exc)
    if "truncated" in text:
        return "the file is truncated"
    return text or type(exc).__name__


def probe(data: bytes, *, max_pixels: int) -> ImageInfo:
    """The input's description from its header alone (size as displayed, after EXIF orientation)."""
    image, fmt = read_header(data, max_pixels)
    width, height = _displayed_size(image)
    mime, ext = FORMATS[fmt]
    return ImageInfo(
        format=fmt, mime=mime, ext=ext, width=width, height=height, interpret=_interpretation(image)
    )


def _quarter_turned(image: Image.Image) -> bool:
    try:
        return image.getexif().get(ExifTags.Base.Orientation) in (5, 6, 7, 8)
    except Exception:  # noqa: BLE001 - unreadable EXIF: decode() reports it if it matters
        return False


def _displayed_size(image: Image.Image) -> tuple[int, int]:
    width, height = image.size
    return (height, width) if _quarter_turned(image) else (width, height)


def _interpretation(image: Image.Image) -> str:
    mode = image.mode
    if mode == "CMYK":
        return "cmyk"
    if mode.startswith("I;16") or mode in ("I", "F"):
        return "grey16"
    if mode in ("1", "L", "LA", "La"):
        return "b-w"
    if mode.startswith("RGB") and mode.endswith("16"):
        return "rgb16"
    return "srgb"


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "RGBa", "LA", "La", "PA") or "transparency" in image.info


def _high_bit_depth_to_l(image: Image.Image) -> Image.Image:
    """Greyscale deeper than 8 bits -> 8-bit L, scaling instead of clipping (Pillow's convert clips)."""
    values = np.asarray(image).astype(np.float64)
    if image.mode == "F":
        top = 1.0 if values.max(initial=0.0) <= 1.0 else (255.0 if values.max() <= 255.0 else 65535.0)
    else:
        top = 65535.0 if values.max(initial=0) > 255 or image.mode.startswith("I;16") else 255.0
    return Image.fromarray(np.clip(values / top * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")


def _to_srgb(image: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
    icc = image.info.get("icc_profile")
    if image.mode.startswith("I") or image.mode == "F":
        image = _high_bit_depth_to_l(image)
        icc = None  # a profile for the 16-bit data does not describe our rescaled copy reliably
    alpha: np.ndarray | None = None
    if _has_alpha(image):
        rgba = image.convert("RGBA")
        alpha = np.asarray(rgba)[..., 3]
        if alpha.min() == 255:
            alpha = None
        colour = rgba.convert("RGB") if image.mode not in ("LA", "La") else image.convert("L")
    elif image.mode in ("RGB", "L", "CMYK"):
        colour = image
    elif image.mode == "P":
        colour = image.convert("RGB")
    else:
        colour = image.convert("RGB")
    if icc and colour.mode in ("RGB", "L", "CMYK"):
        converted = _apply_icc(colour, icc)
        if converted is not None:
            return np.asarray(converted), alpha
    return np.asarray(colour.convert("RGB")), alpha


_SRGB = ImageCms.createProfile("sRGB")


def srgb_icc_profile() -> bytes:
    return ImageCms.ImageCmsProfile(_SRGB).tobytes()


def _apply_icc(colour: Image.Image, icc: bytes) -> Image.Image | None:
    """Convert through the embedded profile to sRGB; ``None`` if the profile is broken or mismatched.

    A broken profile is common in the wild (stripped or edited files) and is no reason to fail the
    image: it then falls back to reading the pixels as sRGB, as browsers do.
    """
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        return ImageCms.profileToProfile(
            colour, source, _SRGB, renderingIntent=ImageCms.Intent.PERCEPTUAL, outputMode="RGB"
        )
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
        return None


def encode(
    rgb: np.ndarray,
    alpha: np.ndarray | None,
    *,
    image_format: ImageFormat,
    quality: int,
    dpi: int | None = None,
    icc_profile: bytes | None = None,
) -> bytes:
    """Encode sRGB pixels. Alpha is kept for PNG and flattened onto white for JPEG."""
    params: dict[str, object] = {}
    if dpi is not None:
        params["dpi"] = (dpi, dpi)
    if icc_profile is not None:
        params["icc_profile"] = icc_profile
    buffer = io.BytesIO()
    if image_format is ImageFormat.JPEG:
        if alpha is not None:
            rgb = flatten_on_white(rgb, alpha)
        Image.fromarray(rgb, mode="RGB").save(
            buffer,
            format="JPEG",
            quality=quality,
            subsampling=0 if quality >= FULL_CHROMA_FROM_QUALITY else 2,
            **params,
        )
    else:
        pixels = rgb if alpha is None else np.dstack([rgb, alpha])
        Image.fromarray(pixels, mode="RGB" if alpha is None else "RGBA").save(
            buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL, **params
        )
    return buffer.getvalue()


def flatten_on_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    weight = alpha.astype(np.float32)[..., None] / 255.0
    return (rgb.astype(np.float32) * weight + 255.0 * (1.0 - weight) + 0.5).astype(np.uint8)
