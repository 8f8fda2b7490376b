from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageCms, JpegImagePlugin

from leapi.models import MarketplacePreset, PrintPreset, RealEstatePreset
from leapi_server.engine import EngineError, enhance, sniff_format
from leapi_server.engine.codec import decode, estimate_jpeg_quality
from tests.server.engine.images import decode as open_image
from tests.server.engine.images import encode, linear_rgb_icc_profile, pixels, scene

#: Pure image functions: no server, so once, not once per server backend.
pytestmark = pytest.mark.own_backends

FORMATS = ["JPEG", "PNG", "TIFF", "BMP", "WEBP"]
# Keep the image itself: no resampling, no restoration or colour stages.
IDENTITY = {"restoration_level": 1, "lightai_intensity": 0.0, "toneai_intensity": 0.0}


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_input_format_is_sniffed_decoded_and_described(fmt):
    data = encode(scene(64, 48), fmt)
    assert sniff_format(data[:16]) == fmt
    result = enhance(data, MarketplacePreset(width=128))
    assert (result.input.format, result.input.width, result.input.height) == (fmt, 64, 48)
    assert result.input.mime == f"image/{fmt.lower()}"
    assert result.input.ext == {"JPEG": "jpg", "TIFF": "tiff"}.get(fmt, fmt.lower())
    assert (result.output.width, result.output.height) == (128, 96)
    out = open_image(result.data)
    assert (out.format, out.size, out.mode) == ("JPEG", (128, 96), "RGB")


@pytest.mark.parametrize("head", [b"", b"GIF89a....", b"%PDF-1.4", b"RIFF\x00\x00\x00\x00WAVE", b"\x00" * 16])
def test_sniff_format_rejects_other_data(head):
    assert sniff_format(head) is None


def test_default_output_is_jpeg_at_preset_quality_with_4_2_0_chroma():
    result = enhance(encode(scene(), "PNG"), MarketplacePreset())
    out = open_image(result.data)
    assert (out.format, result.output.format, result.output.mime, result.output.ext) == (
        "JPEG",
        "JPEG",
        "image/jpeg",
        "jpg",
    )
    assert result.output.interpret == "srgb"
    assert estimate_jpeg_quality(out.quantization) == 85
    assert JpegImagePlugin.get_sampling(out) == 2  # 4:2:0 below quality 90


@pytest.mark.parametrize("quality", [30, 75, 95])
def test_jpeg_quality_is_honoured_and_high_quality_keeps_full_chroma(quality):
    result = enhance(encode(scene(), "PNG"), MarketplacePreset(quality=quality))
    out = open_image(result.data)
    assert estimate_jpeg_quality(out.quantization) == quality
    assert JpegImagePlugin.get_sampling(out) == (0 if quality >= 90 else 2)


@pytest.mark.parametrize("quality", [10, 20, 40, 50, 75, 90, 97])
def test_jpeg_quality_is_estimated_from_quantisation_tables(quality):
    data = encode(scene(), "JPEG", quality=quality)
    assert decode(data, max_pixels=10**6).jpeg_quality == quality


def test_png_output_is_png_and_fast_compressed():
    result = enhance(encode(scene(), "JPEG"), RealEstatePreset(image_format="png"))
    out = open_image(result.data)
    assert (out.format, result.output.mime, result.output.ext) == ("PNG", "image/png", "png")


@pytest.mark.parametrize("image_format", ["JPEG", "PNG"])
def test_print_writes_dpi_and_srgb_profile(image_format):
    result = enhance(encode(scene(), "PNG"), PrintPreset(dpi=600, image_format=image_format))
    out = open_image(result.data)
    assert out.info["dpi"] == pytest.approx((600, 600), abs=0.5)
    profile = ImageCms.ImageCmsProfile(io.BytesIO(out.info["icc_profile"]))
    assert "sRGB" in ImageCms.getProfileDescription(profile)


def test_print_defaults_to_300_dpi_and_other_presets_write_none():
    printed = open_image(enhance(encode(scene(), "PNG"), PrintPreset()).data)
    assert printed.info["dpi"] == pytest.approx((300, 300), abs=0.5)
    market = open_image(enhance(encode(scene(), "PNG"), MarketplacePreset(image_format="PNG")).data)
    assert "dpi" not in market.info


def test_exif_orientation_is_applied():
    # Stored 40 wide, 20 tall, left half red; orientation 6 means "rotate 90 degrees clockwise to view".
    stored = np.zeros((20, 40, 3), dtype=np.uint8)
    stored[:, :20] = (255, 0, 0)
    stored[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(stored, "JPEG", quality=95, exif=exif.tobytes())
    result = enhance(data, MarketplacePreset(image_format="PNG", **IDENTITY))
    assert (result.input.width, result.input.height) == (20, 40)
    out = pixels(result.data)
    assert out.shape == (40, 20, 3)
    assert out[5, 10, 0] > 200 and out[5, 10, 2] < 60  # red on top after the turn
    assert out[35, 10, 2] > 200 and out[35, 10, 0] < 60
    assert "exif" not in open_image(result.data).info  # the orientation tag must not be applied twice


def test_rgba_png_keeps_alpha_for_png_and_flattens_on_white_for_jpeg():
    rgba = np.zeros((32, 32, 4), dtype=np.uint8)
    rgba[..., :3] = (0, 0, 0)
    rgba[:, 16:, 3] = 255  # left half fully transparent black
    data = encode(rgba, "PNG")
    as_png = open_image(enhance(data, MarketplacePreset(image_format="PNG", **IDENTITY)).data)
    assert as_png.mode == "RGBA"
    assert np.asarray(as_png)[:, :8, 3].max() == 0 and np.asarray(as_png)[:, 24:, 3].min() == 255
    as_jpeg = np.asarray(open_image(enhance(data, MarketplacePreset(**IDENTITY)).data).convert("RGB"))
    assert as_jpeg[:, :8].min() > 240  # transparent -> white
    assert as_jpeg[:, 24:].max() < 20  # opaque black stays black


def test_palette_with_transparency_keeps_alpha():
    image = Image.new("P", (16, 16), 0)
    image.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    image.paste(1, (8, 0, 16, 16))
    data = encode(image, "PNG", transparency=0)
    out = np.asarray(open_image(enhance(data, MarketplacePreset(image_format="PNG", **IDENTITY)).data))
    assert out.shape == (16, 16, 4)
    assert out[:, :6, 3].max() == 0 and out[:, 10:, 3].min() == 255
    assert out[4, 12, 1] > 200


def test_opaque_alpha_is_dropped():
    rgba = np.dstack([scene(32, 32), np.full((32, 32), 255, np.uint8)])
    out = open_image(enhance(encode(rgba, "PNG"), MarketplacePreset(image_format="PNG")).data)
    assert out.mode == "RGB"


def test_cmyk_jpeg_is_converted_to_rgb():
    cmyk = Image.new("CMYK", (32, 32), (0, 255, 255, 0))  # pure red ink
    result = enhance(encode(cmyk, "JPEG", quality=95), MarketplacePreset(image_format="PNG", **IDENTITY))
    assert result.input.interpret == "cmyk"
    red = pixels(result.data)[16, 16]
    assert red[0] > 200 and red[1] < 60 and red[2] < 60


def test_16_bit_greyscale_is_scaled_not_clipped():
    ramp = np.tile(np.linspace(0, 65535, 64, dtype=np.uint16), (16, 1))
    data = encode(Image.fromarray(ramp), "PNG")
    result = enhance(data, MarketplacePreset(image_format="PNG", **IDENTITY))
    assert result.input.interpret == "grey16"
    out = pixels(result.data, "L")
    assert out[:, 0].max() < 5 and out[:, -1].min() > 250
    assert 110 < out[8, 32] < 145  # mid-grey stays mid-grey (clipping would saturate it)


def test_greyscale_and_bilevel_inputs():
    grey = (scene()[..., 1]).copy()
    assert enhance(encode(grey, "PNG"), MarketplacePreset()).input.interpret == "b-w"
    bilevel = Image.fromarray(grey > 128)
    out = pixels(enhance(encode(bilevel, "PNG"), MarketplacePreset(image_format="PNG", **IDENTITY)).data)
    assert set(np.unique(out)) <= {0, 255}


def test_embedded_icc_profile_is_converted_and_broken_one_ignored():
    image = scene()
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    tagged = pixels(
        enhance(
            encode(image, "PNG", icc_profile=srgb), MarketplacePreset(image_format="PNG", **IDENTITY)
        ).data
    )
    assert np.abs(tagged.astype(int) - image).max() <= 2
    broken = pixels(
        enhance(
            encode(image, "PNG", icc_profile=b"not a profile"),
            MarketplacePreset(image_format="PNG", **IDENTITY),
        ).data
    )
    assert np.abs(broken.astype(int) - image).max() <= 1  # Y'CbCr round trip only


def test_non_srgb_profile_is_converted_to_srgb():
    grey = np.full((16, 16, 3), 128, np.uint8)
    data = encode(grey, "PNG", icc_profile=linear_rgb_icc_profile())
    result = enhance(data, MarketplacePreset(image_format="PNG", **IDENTITY))
    assert 183 <= pixels(result.data)[8, 8].mean() <= 193  # linear 0.5 is sRGB 188


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _png_header_only(width: int, height: int) -> bytes:
    """A valid PNG header announcing a huge image, with one row of data: a bomb in ~60 bytes."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + _png_chunk(b"IEND", b"")
    )


@pytest.mark.parametrize("side", [12_000, 100_000])  # above our limit; above Pillow's own bomb limit
def test_decompression_bomb_is_refused_from_the_header(side):
    with pytest.raises(EngineError, match=r"too large|over the limit"):
        enhance(_png_header_only(side, side), MarketplacePreset())


def test_pixel_limit_is_checked_before_decoding():
    data = encode(scene(200, 100), "PNG")
    with pytest.raises(EngineError, match="over the limit"):
        enhance(data, MarketplacePreset(), max_input_pixels=19_999)
    assert enhance(data, MarketplacePreset(), max_input_pixels=20_000).input.width == 200


def test_output_pixel_limit():
    with pytest.raises(EngineError, match="requested output"):
        enhance(encode(scene(), "PNG"), MarketplacePreset(width=20_000), max_output_pixels=10_000_000)


@pytest.mark.parametrize("fmt", FORMATS)
def test_truncated_image_is_an_engine_error(fmt):
    data = encode(scene(64, 64), fmt)
    with pytest.raises(EngineError) as caught:
        enhance(data[: len(data) // 2], MarketplacePreset())
    assert fmt in str(caught.value) and "0x" not in str(caught.value)  # user-facing, no object reprs


@pytest.mark.parametrize("data", [b"", b"hello world", b"\xff\xd8\xff" + b"\x00" * 50, b"\x89PNG\r\n\x1a\n"])
def test_garbage_is_an_engine_error(data):
    with pytest.raises(EngineError):
        enhance(data, MarketplacePreset())


def test_big_reduction_decodes_a_jpeg_at_reduced_scale_and_reports_the_file_size():
    data = encode(scene(800, 600), "JPEG", quality=80)
    result = enhance(data, MarketplacePreset(width=100, image_format="PNG", **IDENTITY))
    assert (result.input.width, result.input.height) == (800, 600)
    assert pixels(result.data).shape == (75, 100, 3)
    # Same picture as a full decode + antialiased downscale, to within JPEG/DCT-scaling differences.
    reference = np.asarray(Image.fromarray(pixels(data)).resize((100, 75), Image.Resampling.LANCZOS))
    assert np.abs(pixels(result.data).astype(int) - reference).mean() < 6


def test_broken_exif_does_not_fail_the_image():
    data = encode(scene(64, 48), "JPEG", quality=90)
    # An APP1 "Exif" segment whose TIFF header is garbage, right after SOI.
    payload = b"Exif\x00\x00" + b"XX\x00\x2a" + b"\xff" * 20
    broken = data[:2] + b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload + data[2:]
    result = enhance(broken, MarketplacePreset())
    assert (result.output.width, result.output.height) == (64, 48)
