"""Bad input to ``leapi-server`` (issue 6): every malformed request is REJECTED naming the field and costs
nothing; every bad or odd source image is answered in its own result and never fails its pipeline's other
images. (The basics live in ``test_api.py``: one case per kind there, every kind here.)"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from devkit.server import (
    QUICK_START_OPERATION,
    RunningServer,
    running_server,
    wait_for_pipeline,
)
from leapi_server.config import DEFAULT_MAX_URLS_PER_PIPELINE
from tests.server import hostile_images

GOOD = "https://example.com/a.jpg"


def body(urls: object = GOOD, **operation: object) -> dict:
    return {
        "source": {"http": {"url": urls}},
        "operations": [{**QUICK_START_OPERATION, **operation}],
        "sink": {"temp_store": True},
    }


def raw(payload: dict) -> bytes:
    return json.dumps(payload).encode()


def used_credits(client: httpx.Client) -> int:
    return client.get("/v1/me/usage/").json()["used"]


def rejected(client: httpx.Client, content: bytes, status: int = 400) -> str:
    """POST ``content``; assert a REJECTED answer with ``status`` that charged nothing; return the reason."""
    before = used_credits(client)
    response = client.post("/v1/pipeline", content=content, headers={"Content-Type": "application/json"})
    assert response.status_code == status, response.text
    answer = response.json()
    assert answer["status"] == "REJECTED" and set(answer) == {"status", "reason"}
    assert used_credits(client) == before
    return answer["reason"]


# -- malformed JSON ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "body: malformed JSON"),
        (b"   \n", "body: malformed JSON"),
        (b"{}{}", "body: malformed JSON (Extra data"),
        (b"{'source': 1}", "body: malformed JSON"),  # Python, not JSON
        ('{"source": "\xe9"}'.encode("latin-1"), "body: malformed JSON ('utf-8' codec"),
        (b"[" * 100_000, "body: malformed JSON (nested too deeply)"),  # a parser stack bomb, not a 500
        (b'{"a":' * 50_000, "body: malformed JSON (nested too deeply)"),
        (raw(body(width=1)).replace(b'"width": 1', b'"width": ' + b"9" * 5000), "body: malformed JSON (Exceeds"),
        (raw(body(width=1)).replace(b'"width": 1', b'"width": NaN'), "operations.0.width: Input should be a finite"),
        (raw(body(width=1)).replace(b'"width": 1', b'"width": 1e400'), "operations.0.width: Input should be a finite"),
        (b"null", "body: must be a JSON object"),
        (b'"a string"', "body: must be a JSON object"),
        (b"42", "body: must be a JSON object"),
    ],
    ids=[
        "empty",
        "whitespace",
        "two-documents",
        "python-quotes",
        "latin-1",
        "nested-arrays",
        "nested-objects",
        "5000-digit-int",
        "nan",
        "infinity",
        "null",
        "string",
        "number",
    ],
)  # fmt: skip
def test_malformed_json(leapi_server: RunningServer, content: bytes, reason: str) -> None:
    with leapi_server.client() as client:
        assert rejected(client, content).startswith(reason)


# -- wrong types, unknown ops and fields, out-of-range values ----------------------------------------------

_WRONG = [
    # wrong types
    ({**body(), "source": GOOD}, "source: Input should be a valid dictionary"),
    ({**body(), "source": {"http": [GOOD]}}, "source.http: Input should be a valid dictionary"),
    (body(5), "source.http.url: Input should be a valid list"),
    (body([GOOD, 5]), "source.http.url.1: Input should be a valid string"),
    (body([]), "source.http.url: List should have at least 1 item"),
    (body(""), "source.http.url.0: String should have at least 1 character"),
    ({**body(), "operations": QUICK_START_OPERATION}, "operations: Input should be a valid list"),
    ({**body(), "operations": []}, "operations: List should have at least 1 item"),
    ({**body(), "operations": [None]}, "operations.0: Input should be a valid dictionary"),
    ({**body(), "operations": [{"width": 100}]}, "operations.0.op: Field required"),
    ({**body(), "operations": [{"op": 7}]}, "operations.0.op:"),
    (body(width=100.5), "operations.0.width: Input should be a valid integer"),
    (body(width="wide"), "operations.0.width: Input should be a valid integer"),
    (body(width=True), "operations.0.width:"),
    (body(lightai_intensity="max"), "operations.0.lightai_intensity: Input should be a valid number"),
    (body(image_format="GIF"), "operations.0.image_format: Input should be 'JPEG' or 'PNG'"),
    ({**body(), "notify_url": 5}, "notify_url: Input should be a valid string"),
    ({**body(), "sink": "temp_store"}, "sink: Input should be a valid dictionary"),
    # unknown ops and fields
    (body(op="preset/unknown"), "operations.0.op: unknown operation 'preset/unknown'"),
    (body(op="PRESET/MARKETPLACE"), "operations.0.op: unknown operation"),
    ({**body(), "priority": "high"}, "priority: unknown field"),
    ({**body(), "source": {"http": {"url": GOOD}, "s3": {}}}, "source.s3: unknown field"),
    ({**body(), "source": {"http": {"url": GOOD, "headers": {}}}}, "source.http.headers: unknown field"),
    ({**body(), "sink": {"temp_store": True, "s3": "bucket"}}, "sink.s3: unknown field"),
    (body(tone_ai=0.5), "operations.0.tone_ai: unknown field"),
    # out of range
    (body(width=0), "operations.0.width: Input should be greater than or equal to 1"),
    (body(height=-5), "operations.0.height: Input should be greater than or equal to 1"),
    (body(width=40_001), "operations.0.width: Input should be less than or equal to 40000"),
    (body(quality=0), "operations.0.quality: Input should be greater than or equal to 1"),
    (body(quality=101), "operations.0.quality: Input should be less than or equal to 100"),
    (body(restoration_level=0), "operations.0.restoration_level: Input should be greater than or equal to 1"),
    (body(lightai_intensity=1.5), "operations.0.lightai_intensity: Input should be less than or equal to 1"),
    (
        body(toneai_intensity=-0.1),
        "operations.0.toneai_intensity: Input should be greater than or equal to 0",
    ),
    (body(width=20_000, height=20_000), "operations.0.width: the 20000x20000 box is 400.0 MP"),
    # sources and webhooks that are not http(s)
    (body("data:image/png;base64,iVBORw0KGgo="), "source.http.url.0: must be an http or https URL"),
    (body("gopher://example.com/a.jpg"), "source.http.url.0: must be an http or https URL"),
    (body("javascript:alert(1)"), "source.http.url.0: must be an http or https URL"),
    (body("//example.com/a.jpg"), "source.http.url.0: must be an http or https URL"),
    (body("example.com/a.jpg"), "source.http.url.0: must be an http or https URL"),
    (body("/images/a.jpg"), "source.http.url.0: must be an http or https URL"),
    (body("http:///a.jpg"), "source.http.url.0: has no host"),
    (body("https://exa mple.com/a.jpg"), "source.http.url.0: has an invalid host name"),
    (body("https://a..b/a.jpg"), "source.http.url.0: has an invalid host name"),
    (body("https://example.com:99999/a.jpg"), "source.http.url.0: is not a valid URL"),
    ({**body(), "notify_url": "ftp://example.com/hook"}, "notify_url: must be an http or https URL"),
]


@pytest.mark.parametrize(
    ("payload", "reason"),
    _WRONG,
    ids=[reason.split(":")[0] + f"-{i}" for i, (_, reason) in enumerate(_WRONG)],
)
def test_invalid_requests_name_the_field(leapi_server: RunningServer, payload: dict, reason: str) -> None:
    with leapi_server.client() as client:
        answer = rejected(client, raw(payload))
    assert answer.startswith(reason), answer


def test_the_urls_per_pipeline_limit_is_exact(leapi_server: RunningServer, source_server: str) -> None:
    """The documented limit (packages/leapi-server/README.md, "Limits"): 100 URLs are accepted and charged 100 credits, 101 or
    10,000 are REJECTED naming the limit and charge nothing. (404 sources: cheap to process.)"""
    limit = DEFAULT_MAX_URLS_PER_PIPELINE
    urls = [f"{source_server}/gone-{i}.jpg" for i in range(limit + 1)]
    with leapi_server.client() as client:
        for count in (limit + 1, 10_000):
            many = urls + [f"{source_server}/more-{i}.jpg" for i in range(count - len(urls))]
            reason = rejected(client, raw(body(many[:count], width=64, height=64)))
            assert reason == (
                f"source.http.url: at most {limit} URLs per pipeline on this server, got {count}; split the request"
            )
        before = used_credits(client)
        accepted = client.post("/v1/pipeline", json=body(urls[:limit], width=64, height=64))
        assert accepted.status_code == 200
        assert used_credits(client) == before + limit
        pipeline = wait_for_pipeline(client, accepted.json()["pipeline"]["id"], timeout=120)
    assert pipeline["status"] == "ERROR" and len(pipeline["results"]) == limit
    assert all("HTTP 404" in r["error"] for r in pipeline["results"])


# -- SSRF: every spelling of a private address --------------------------------------------------------------


@pytest.fixture(scope="module")
def default_policy_server() -> Iterator[RunningServer]:
    with running_server(allow_private_sources=False, extra_args=("--workers", "1")) as server:
        yield server


@pytest.mark.parametrize(
    ("url", "address"),
    [
        ("http://2130706433/a.jpg", "127.0.0.1"),  # decimal
        ("http://0x7f000001/a.jpg", "127.0.0.1"),  # hexadecimal
        ("http://0177.0.0.1/a.jpg", "127.0.0.1"),  # octal
        ("http://127.1/a.jpg", "127.0.0.1"),  # short form
        ("http://0x7f.1/a.jpg", "127.0.0.1"),
        ("http://10.1/a.jpg", "10.0.0.1"),
        ("http://0xa9fea9fe/latest/meta-data/", "169.254.169.254"),
        ("http://0/a.jpg", "0.0.0.0"),
    ],
)
def test_private_addresses_in_legacy_ipv4_spellings_are_refused_at_submit(
    default_policy_server: RunningServer, url: str, address: str
) -> None:
    """The resolver reads these as IP addresses (``inet_aton``); so does the submit check, so they are
    refused up front instead of being charged and failing later."""
    with default_policy_server.client() as client:
        reason = rejected(client, raw(body(url)))
        notify = rejected(client, raw({**body("https://example.com/a.jpg"), "notify_url": url}))
    assert reason.startswith("source.http.url.0: is refused:") and f"({address})" in reason
    assert notify.startswith("notify_url: is refused:")
    # The refusal names the flag that lifts it (a metadata address is lifted by --allow-source-network only).
    remedy = (
        "--allow-source-network" if address == "169.254.169.254" else "--allow-private-sources for local use"
    )
    assert remedy in reason and remedy in notify


# -- bad and unusual source images --------------------------------------------------------------------------

#: name -> (bytes, pattern the image's own error must match)
_BROKEN: dict[str, tuple[bytes, str]] = {
    "zero-bytes.jpg": (b"", r"^source is empty \(0 bytes\)$"),
    "page.jpg": (b"<!doctype html><html><body>Not found</body></html>\n" * 3, "not a supported image"),
    "document.png": (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj <<>> endobj\n" * 3, "not a supported image"),
    "vector.jpg": (b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>' * 2, "not a supported image"),
    "animated.gif": (hostile_images.animated_gif(), "not a supported image: expected JPEG, TIFF, PNG, BMP or WEBP"),
    **{
        f"truncated.{fmt.lower()}": (hostile_images.truncated(fmt), rf"^cannot (read|decode) the {fmt} image")
        for fmt in hostile_images.FORMATS
    },
    **{
        f"header-only.{fmt.lower()}": (hostile_images.header_only(fmt), rf"^cannot (read|decode) the {fmt} image")
        for fmt in hostile_images.FORMATS
    },
    # BMP has no checksum and WEBP's lossy stream decodes noise as noise: only formats that can tell.
    **{
        f"scrambled.{fmt.lower()}": (hostile_images.scrambled(fmt), rf"^cannot (read|decode) the {fmt} image")
        for fmt in ("JPEG", "PNG", "TIFF")
    },
    "bomb.jpg": (hostile_images.jpeg_bomb(), r"^the JPEG image is too large to process"),
    "bomb.bmp": (hostile_images.bmp_bomb(), r"^the BMP image is too large to process"),
    "bomb.tiff": (hostile_images.tiff_bomb(), r"^the TIFF image is too large to process"),
    "bomb.webp": (hostile_images.webp_bomb(), r"^the WEBP image is (too large to process|.* over the limit)"),
}  # fmt: skip


@pytest.fixture(scope="module")
def hostile_urls(source_dir: Path, source_server: str) -> dict[str, str]:
    for name, (content, _) in _BROKEN.items():
        (source_dir / f"hostile-{name}").write_bytes(content)
    return {name: f"{source_server}/hostile-{name}" for name in _BROKEN}


def test_every_broken_image_fails_alone_with_a_clear_reason(
    leapi_server: RunningServer, hostile_urls: dict[str, str], source_photos: dict[str, str]
) -> None:
    names = list(_BROKEN)
    urls = [hostile_urls[n] for n in names] + [source_photos["cat.jpg"]]
    with leapi_server.client() as client:
        before = used_credits(client)
        response = client.post("/v1/pipeline", json=body(urls, width=120, height=80))
        pipeline = wait_for_pipeline(client, response.json()["pipeline"]["id"], timeout=120)
        assert used_credits(client) == before + len(urls)  # one credit per URL, as documented
        assert client.get("/healthz").status_code == 200
    *broken, good = pipeline["results"]
    assert pipeline["status"] == "DONE"
    assert good["error"] is None and good["output_object"]["size"] == [120, 80]
    for name, result in zip(names, broken, strict=False):
        assert result["output_object"] is None, name
        assert result["error"] and _matches(_BROKEN[name][1], result["error"]), (name, result["error"])
        assert "Traceback" not in result["error"] and "0x" not in result["error"], name
    assert pipeline["errors"] == [f"{r['input_object']['url']}: {r['error']}" for r in broken]


def _matches(pattern: str, text: str) -> bool:
    import re

    return re.search(pattern, text) is not None


_ODD: dict[str, bytes] = {
    "cmyk.jpg": hostile_images.cmyk_jpeg(),
    "grey16.png": hostile_images.grey16_png(),
    "rgb16.png": hostile_images.rgb16_png(),
    "grey16.tiff": hostile_images.grey16_tiff(),
    "alpha.png": hostile_images.rgba_png(),
    "exif-rotated.jpg": hostile_images.exif_rotated_jpeg(),
    "animated.webp": hostile_images.animated_webp(),
    "animated.png": hostile_images.animated_png(),
    "multipage.tiff": hostile_images.multipage_tiff(),
    "reference.png": hostile_images.encoded(hostile_images.photo(), "PNG"),
}
#: Enhancement stages off (level 1, intensities 0): colours can be compared with the source.
_NEUTRAL = {"restoration_level": 1, "lightai_intensity": 0.0, "toneai_intensity": 0.0}


@pytest.fixture(scope="module")
def odd_outputs(leapi_server: RunningServer, source_dir: Path, source_server: str) -> dict[str, dict]:
    """Each odd-but-valid image through the server, as JPEG and as PNG: name -> format -> (result, pixels)."""
    for name, content in _ODD.items():
        (source_dir / f"odd-{name}").write_bytes(content)
    urls = [f"{source_server}/odd-{name}" for name in _ODD]
    outputs: dict[str, dict] = {name: {} for name in _ODD}
    with leapi_server.client() as client:
        for image_format in ("JPEG", "PNG"):
            payload = body(urls, width=120, height=80, image_format=image_format, **_NEUTRAL)
            pipeline_id = client.post("/v1/pipeline", json=payload).json()["pipeline"]["id"]
            pipeline = wait_for_pipeline(client, pipeline_id, timeout=120)
            assert pipeline["status"] == "DONE" and pipeline["errors"] == [], pipeline["errors"]
            for name, result in zip(_ODD, pipeline["results"], strict=False):
                image = Image.open(io.BytesIO(httpx.get(result["output_object"]["tmp_url"]).content))
                assert image.format == image_format and image.size == tuple(result["output_object"]["size"])
                outputs[name][image_format] = (result, np.asarray(image))
    return outputs


def _mean(pixels: np.ndarray) -> np.ndarray:
    return pixels[..., :3].reshape(-1, 3).mean(axis=0)


def test_cmyk_is_converted_to_the_same_colours_as_rgb(odd_outputs: dict) -> None:
    result, cmyk = odd_outputs["cmyk.jpg"]["PNG"]
    _, reference = odd_outputs["reference.png"]["PNG"]
    assert result["input_object"]["interpret"] == "cmyk" and result["output_object"]["interpret"] == "srgb"
    assert np.abs(_mean(cmyk) - _mean(reference)).max() < 4  # not inverted, not washed out


@pytest.mark.parametrize("name", ["grey16.png", "grey16.tiff"])
def test_16_bit_greyscale_is_scaled_not_clipped(odd_outputs: dict, name: str) -> None:
    result, pixels = odd_outputs[name]["PNG"]
    assert result["input_object"]["interpret"] == "grey16"
    assert np.allclose(_mean(pixels), 40_000 / 65_535 * 255, atol=2)  # 156, where clipping would give 255


def test_16_bit_rgb_keeps_its_colours(odd_outputs: dict) -> None:
    _, deep = odd_outputs["rgb16.png"]["PNG"]
    _, reference = odd_outputs["reference.png"]["PNG"]
    assert np.abs(_mean(deep) - _mean(reference)).max() < 3


def test_alpha_is_kept_in_png_and_flattened_on_white_in_jpeg(odd_outputs: dict) -> None:
    _, png = odd_outputs["alpha.png"]["PNG"]
    _, jpeg = odd_outputs["alpha.png"]["JPEG"]
    assert png.shape[2] == 4
    assert png[40, 10, 3] == 255 and png[40, 110, 3] == 0  # opaque left half, transparent right half
    assert jpeg.shape[2] == 3
    assert (jpeg[40, 110] > 245).all()  # the transparent half is white, not the black underneath
    assert jpeg[40, 10, 0] > 180 and jpeg[40, 10, 2] < 80  # the opaque half is still red


def test_exif_orientation_is_applied(odd_outputs: dict) -> None:
    result, pixels = odd_outputs["exif-rotated.jpg"]["JPEG"]
    assert result["input_object"]["size"] == [100, 150]  # as displayed, not as stored (150x100)
    assert result["output_object"]["size"] == [53, 80]  # portrait into the 120x80 box
    top_right, top_left = pixels[3, -4], pixels[3, 3]
    assert top_right[0] > 180 and top_right[2] < 80  # the red block, moved by the rotation
    assert (top_left > 200).all()


@pytest.mark.parametrize("name", ["animated.webp", "animated.png", "multipage.tiff"])
def test_animated_and_multipage_inputs_use_the_first_frame(odd_outputs: dict, name: str) -> None:
    """Documented in packages/leapi-server/README.md: the first frame (page) is enhanced; animated GIF is not a supported input."""
    result, pixels = odd_outputs[name]["JPEG"]
    assert result["output_object"]["size"] == [120, 80]
    red, green, blue = _mean(pixels)
    assert red > 180 and blue < 80, (red, green, blue)  # the red first frame, not the blue second one
