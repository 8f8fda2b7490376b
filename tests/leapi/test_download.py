"""Verified downloads: real results of a ``leapi-server`` (to a path, a seekable or a one-way stream; tampered
and expired URLs; results that are not what the API reported), and broken transfers played by respx."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO

import httpx
import pytest
import respx
from PIL import Image

import leapi
from devkit.server import RunningServer
from leapi.errors import LeapiHTTPError, LeapiResultExpiredError, LeapiResultVerificationError
from leapi.imageinfo import ImageInfo
from leapi.results import ResultFile

OPERATION = {"op": "preset/print", "width": 160, "image_format": "PNG"}


@pytest.fixture(scope="module")
def done_result(leapi_server: RunningServer, source_photos: dict[str, str]) -> ResultFile:
    """The one result (a 160x107 PNG) of a DONE pipeline on the session's server."""
    with leapi.Client(api_key=leapi_server.api_key, base_url=leapi_server.base_url) as client:
        pipeline_id = client.submit(leapi.PipelineRequest.build(source_photos["burger.jpg"], [OPERATION])).id
        pipeline = client.wait(pipeline_id, poll_interval=0.3, initial_poll_interval=0.05, timeout=60)
    (files, failed) = leapi.result_files(pipeline)
    assert failed == {}
    return files[0]


@pytest.fixture
def client(leapi_server: RunningServer) -> Iterator[leapi.Client]:
    with leapi.Client(
        api_key=leapi_server.api_key, base_url=leapi_server.base_url, backoff_base=0.01
    ) as client:
        yield client


class OneWayStream(io.RawIOBase):
    """A destination that cannot seek (a pipe, a socket): bytes go out as they come."""

    def __init__(self) -> None:
        self.data = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, chunk) -> int:  # type: ignore[override]
        self.data += chunk
        return len(chunk)


def test_to_a_path_a_seekable_stream_and_a_one_way_stream_alike(client, done_result, tmp_path):
    target = tmp_path / done_result.file_name
    to_path = client.download_result(done_result, target)
    seekable = io.BytesIO(b"HEAD")
    seekable.seek(4)
    to_stream = client.download_result(done_result, seekable)
    one_way = OneWayStream()
    to_pipe = client.download_result(done_result, one_way)  # type: ignore[arg-type]
    data = target.read_bytes()
    assert seekable.getvalue() == b"HEAD" + data and bytes(one_way.data) == data
    assert to_path == to_stream == to_pipe
    assert (to_path.width, to_path.height, to_path.format, to_path.mime) == (160, 107, "PNG", "image/png")
    assert to_path.sha256 == hashlib.sha256(data).hexdigest() and to_path.byte_count == len(data)
    assert seekable.tell() == len(seekable.getvalue()), "a stream is left at the end of the download"


def test_a_custom_inspector_replaces_the_header_reader(client, done_result):
    seen: list[str] = []

    def decode_with_pillow(file: IO[bytes]) -> ImageInfo:
        with Image.open(file) as image:
            image.load()  # decodes the pixels: a stricter check than the header
            seen.append(image.mode)
            return ImageInfo(image.width, image.height, image.format or "?")

    verified = client.download_result(done_result, io.BytesIO(), inspect=decode_with_pillow)
    assert seen == ["RGB"] and verified.format == "PNG"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"width": 161}, "is 160x107 but the API reported 161x107"),
        ({"mime": "image/jpeg"}, "is PNG but the API reported image/jpeg"),
    ],
)
def test_a_result_that_is_not_what_the_api_reported_is_refused_and_not_written(
    client, done_result, tmp_path, change, message
):
    with pytest.raises(LeapiResultVerificationError, match=message):
        client.download_result(dataclasses.replace(done_result, **change), tmp_path / "out.png")
    assert list(tmp_path.iterdir()) == [], "neither the file nor its partial copy is left"


def test_a_tampered_url_is_an_expired_result(client, done_result, tmp_path):
    tampered = dataclasses.replace(
        done_result, tmp_url=done_result.tmp_url.replace("signature=", "signature=0")
    )
    with pytest.raises(LeapiResultExpiredError, match="answered HTTP 403") as info:
        client.download_result(tampered, tmp_path / "out.png")
    message = str(info.value)
    assert f"pipeline {done_result.pipeline_id}" in message and "re-run the image" in message
    assert "signature" not in message, "the signed query string never reaches a message"
    assert info.value.pipeline_id == done_result.pipeline_id and info.value.expired_at is not None
    assert list(tmp_path.iterdir()) == []


def test_a_url_past_its_stated_expiry_is_not_fetched(done_result, tmp_path):
    expired = dataclasses.replace(done_result, expires_at=datetime.now(UTC) - timedelta(seconds=1))
    # Any request would fail the test: none is mocked.
    with (
        respx.mock,
        leapi.Client(api_key="k", base_url="https://leapi.test") as offline,
        pytest.raises(LeapiResultExpiredError, match="it was not fetched"),
    ):
        offline.download_result(expired, tmp_path / "out.png")
    estimated = dataclasses.replace(expired, expiry_is_exact=False)
    assert not estimated.is_expired(), "an estimated expiry is not trusted: the URL is tried"


def test_the_api_key_never_goes_to_a_result_url(client, done_result, leapi_server):
    with respx.mock(assert_all_called=False) as router:
        route = router.get(url__startswith=done_result.tmp_url.split("?")[0]).pass_through()
        client.download(done_result.tmp_url, io.BytesIO())
    assert route.called  # (respx records a passed-through request twice)
    for call in route.calls:
        assert "X-API-KEY" not in call.request.headers
        assert leapi_server.api_key not in str(call.request.headers)


# -- broken transfers (respx) ------------------------------------------------------------------------

URL = "https://s3.test/tmp/p/1/out.png?X-Amz-Signature=deadbeef"
PNG = io.BytesIO()
Image.new("RGB", (40, 30)).save(PNG, format="PNG")
PNG_BYTES = PNG.getvalue()


def fake_result(**changes: object) -> ResultFile:
    base = ResultFile(
        pipeline_id=1,
        index=0,
        source_url="https://img.test/a.jpg",
        preset="print",
        file_name="a__print__1.png",
        tmp_url=URL,
        mime="image/png",
        width=40,
        height=30,
        expires_at=datetime.now(UTC) + timedelta(hours=1),
        expiry_is_exact=True,
    )
    return dataclasses.replace(base, **changes)


class _Stream(httpx.SyncByteStream, httpx.AsyncByteStream):
    """A body that breaks after its first part (sync or async)."""

    def __init__(self, first: bytes) -> None:
        self.first = first

    def __iter__(self):
        yield self.first
        raise httpx.ReadError("connection reset")

    async def __aiter__(self):
        yield self.first
        raise httpx.ReadError("connection reset")


@pytest.fixture
def fake_client(slept) -> Iterator[leapi.Client]:
    with leapi.Client(api_key="k", base_url="https://leapi.test", max_retries=2) as client:
        yield client


@respx.mock
def test_a_dropped_connection_restarts_the_download_from_the_start(fake_client, tmp_path):
    respx.get(URL).side_effect = [
        httpx.Response(200, stream=_Stream(PNG_BYTES[:50])),
        httpx.Response(503),
        httpx.Response(200, content=PNG_BYTES),
    ]
    verified = fake_client.download_result(fake_result(), tmp_path / "a.png")
    assert (tmp_path / "a.png").read_bytes() == PNG_BYTES and verified.byte_count == len(PNG_BYTES)


@respx.mock
def test_a_body_shorter_than_its_content_length_is_retried_then_reported(fake_client):
    short = httpx.Response(200, content=PNG_BYTES[:60], headers={"Content-Length": str(len(PNG_BYTES))})
    route = respx.get(URL).mock(return_value=short)
    sink = io.BytesIO()
    with pytest.raises(
        LeapiHTTPError,
        match=f"after 3 attempts: RemoteProtocolError: got 60 bytes of the announced {len(PNG_BYTES)}",
    ):
        fake_client.download(URL, sink)
    assert route.call_count == 3 and sink.getvalue() == PNG_BYTES[:60], "each attempt starts over"


@respx.mock
def test_a_broken_download_into_a_one_way_stream_cannot_be_retried(fake_client):
    respx.get(URL).side_effect = [httpx.Response(200, stream=_Stream(PNG_BYTES[:50]))]
    with pytest.raises(LeapiHTTPError, match=r"broke after 50 bytes .* cannot be rewound"):
        # (small chunks: httpx hands the bytes over before the connection breaks)
        fake_client.download_result(fake_result(), OneWayStream(), chunk_size=10)  # type: ignore[arg-type]


@respx.mock
@pytest.mark.parametrize(
    ("body", "message"),
    [(b"", "the download is empty"), (b"<Error>gone</Error>", "not a readable image: not a JPEG")],
)
def test_a_body_that_is_no_image_is_refused(fake_client, body, message):
    respx.get(URL).respond(200, content=body)
    with pytest.raises(LeapiResultVerificationError, match=message) as info:
        fake_client.download_result(fake_result(), io.BytesIO())
    assert "deadbeef" not in str(info.value)


@respx.mock
async def test_the_async_client_restarts_broken_downloads_too(slept, tmp_path):
    respx.get(URL).side_effect = [
        httpx.Response(200, stream=_Stream(PNG_BYTES[:50])),
        httpx.Response(200, content=PNG_BYTES),
    ]
    async with leapi.AsyncClient(api_key="k", base_url="https://leapi.test") as client:
        verified = await client.download_result(fake_result(), tmp_path / "a.png")
    assert verified.width == 40 and (tmp_path / "a.png").read_bytes() == PNG_BYTES
    assert len(slept) == 1


def test_result_files_name_and_date_each_result():
    pipeline = leapi.Pipeline.model_validate(
        {
            "id": 9,
            "status": "DONE",
            "finished_at": "2021-04-26T13:46:09.361341",
            "source": {"http": {"url": ["https://img.test/x/burger.jpg", "https://img.test/y/burger.jpg"]}},
            "operations": [{"op": "preset/marketplace"}],
            "results": [
                {
                    "output_object": {
                        "tmp_url": "https://s3.test/a.jpg?X-Amz-Date=20210426T134609Z&X-Amz-Expires=86400",
                        "ext": "jpg",
                        "size": [1800, 1200],
                    }
                },
                {"output_object": None, "error": "source answered HTTP 404"},
            ],
        }
    )
    (first,), failed = leapi.result_files(pipeline)
    assert first.file_name == "burger__marketplace__9-0.jpg" and (first.width, first.height) == (1800, 1200)
    assert first.expires_at == datetime(2021, 4, 27, 13, 46, 9, tzinfo=UTC) and first.expiry_is_exact
    assert failed == {1: "source answered HTTP 404"}
    assert "X-Amz" not in repr(first), "the signed URL stays out of repr"
    with pytest.raises(leapi.LeapiError, match="is PROCESSING, not DONE"):
        leapi.result_files(pipeline.model_copy(update={"status": leapi.PipelineStatus.PROCESSING}))
    assert time.time() > first.expires_at.timestamp() and first.is_expired()


def test_a_failed_download_leaves_no_partial_file(tmp_path: Path):
    with leapi.Client(api_key="k", base_url="https://leapi.test", max_retries=0) as client, respx.mock:
        respx.get(URL).respond(500)
        with pytest.raises(LeapiHTTPError):
            client.download_result(fake_result(), tmp_path / "a.png")
    assert list(tmp_path.iterdir()) == []


@respx.mock
def test_a_redirect_loop_is_a_leapi_error_without_the_signature(fake_client):
    respx.get(URL).respond(302, headers={"Location": URL})
    with pytest.raises(LeapiHTTPError, match="TooManyRedirects") as info:
        fake_client.download(URL, io.BytesIO())
    assert "deadbeef" not in str(info.value)
