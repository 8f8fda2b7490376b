"""Security and limits of ``leapi-server``: SSRF, hostile sources, signed temp URLs, keys kept out of logs."""

from __future__ import annotations

import hashlib
import hmac
import http.server
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from devkit.server import QUICK_START_OPERATION, RunningServer, running_server, wait_for_pipeline
from devkit.sources import serve_http

STRICT_KEY = "sk-strict-SECRET-0001"
WRONG_KEY = "sk-wrong-SECRET-0002"


def body(urls: str | list[str], **extra: object) -> dict:
    return {
        "source": {"http": {"url": urls}},
        "operations": [{**QUICK_START_OPERATION, "width": 120, "height": 80}],
        "sink": {"temp_store": True},
        **extra,
    }


@pytest.fixture(scope="module")
def default_server() -> Iterator[RunningServer]:
    """Default policy: private sources refused."""
    with running_server(allow_private_sources=False, extra_args=("--workers", "1")) as server:
        yield server


@pytest.fixture(scope="module")
def strict_server() -> Iterator[RunningServer]:
    """Private sources refused except 127.0.0.1 (where the test sources live); short limits.

    (Temp URL expiry is tested on a fake clock: ``test_clock.py``.)
    """
    with running_server(
        api_keys=(STRICT_KEY,),
        allow_private_sources=False,
        extra_args=(
            "--workers",
            "1",
            "--allow-source-network",
            "127.0.0.1/32",
            "--fetch-deadline",
            "2",
            "--fetch-read-timeout",
            "1",
            "--max-download-bytes",
            "200000",
        ),
    ) as server:
        yield server


class _TrickyHandler(http.server.BaseHTTPRequestHandler):
    """``/redirect?to=URL`` answers 302 to URL; ``/slow`` trickles a body one byte at a time."""

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        if parts.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", parse_qs(parts.query)["to"][0])
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif parts.path == "/slow":
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", "100000")
            self.end_headers()
            try:
                self.wfile.write(b"\xff\xd8\xff\xe0" + b"\x00" * 16)
                for _ in range(200):  # 0.3 s per byte: every read is within the read timeout
                    self.wfile.write(b"\x00")
                    self.wfile.flush()
                    time.sleep(0.3)
            except OSError:
                pass
        else:
            self.send_error(404)


@pytest.fixture(scope="module")
def tricky_source() -> Iterator[str]:
    with serve_http(_TrickyHandler) as url:
        yield url


def used(server: RunningServer, key: str | None = None) -> int:
    return httpx.get(server.base_url + "/v1/me/usage/", headers=server.headers(key)).json()["used"]


# -- SSRF ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://127.0.0.1:8080/a.jpg", "loopback"),
        ("http://[::1]/a.jpg", "loopback"),
        ("http://10.1.2.3/a.jpg", "private"),
        ("http://192.168.0.10/a.jpg", "private"),
        ("http://172.16.5.4/a.jpg", "private"),
        ("http://169.254.169.254/latest/meta-data/", "metadata"),
        ("http://169.254.10.10/a.jpg", "link-local"),
        ("http://0.0.0.0/a.jpg", "unspecified"),
        ("http://[::ffff:127.0.0.1]/a.jpg", "loopback"),
    ],
)
def test_private_literal_addresses_are_rejected_by_default(
    default_server: RunningServer, url: str, why: str
) -> None:
    before = used(default_server)
    response = httpx.post(
        default_server.base_url + "/v1/pipeline", json=body(url), headers=default_server.headers()
    )
    assert response.status_code == 400
    reason = response.json()["reason"]
    assert reason.startswith("source.http.url.0: is refused") and why in reason
    assert used(default_server) == before


def test_private_notify_url_is_rejected_by_default(default_server: RunningServer) -> None:
    response = httpx.post(
        default_server.base_url + "/v1/pipeline",
        json=body("https://example.com/a.jpg", notify_url="http://127.0.0.1:9/hook"),
        headers=default_server.headers(),
    )
    assert response.status_code == 400 and response.json()["reason"].startswith("notify_url: is refused")


def test_names_resolving_to_private_addresses_are_refused_at_connect(
    default_server: RunningServer, source_photos: dict[str, str]
) -> None:
    port = urlsplit(source_photos["burger.jpg"]).port
    with default_server.client() as client:
        response = client.post("/v1/pipeline", json=body(f"http://localhost:{port}/burger.jpg"))
        assert response.status_code == 200  # a name is only known to be private once resolved
        pipeline = wait_for_pipeline(client, response.json()["pipeline"]["id"])
    assert pipeline["status"] == "ERROR"
    error = pipeline["results"][0]["error"]
    assert "localhost resolves to" in error and "loopback" in error
    assert "start leapi-server with --allow-private-sources" in error  # what to do about it


def test_redirects_are_checked_on_every_hop(
    strict_server: RunningServer, tricky_source: str, source_photos: dict[str, str]
) -> None:
    allowed = source_photos["burger.jpg"]  # 127.0.0.1, explicitly allowed on this server
    refused = allowed.replace("127.0.0.1", "127.0.0.2")
    urls = [f"{tricky_source}/redirect?to={allowed}", f"{tricky_source}/redirect?to={refused}"]
    with strict_server.client() as client:
        response = client.post("/v1/pipeline", json=body(urls))
        pipeline = wait_for_pipeline(client, response.json()["pipeline"]["id"])
    followed, blocked = pipeline["results"]
    assert followed["error"] is None and followed["output_object"]["size"] == [120, 80]
    assert blocked["output_object"] is None
    assert "redirect to" in blocked["error"] and "127.0.0.2 is a loopback address" in blocked["error"]


# -- hostile sources ----------------------------------------------------------------------------------------


def test_slow_loris_source_hits_the_deadline(strict_server: RunningServer, tricky_source: str) -> None:
    started = time.monotonic()
    with strict_server.client() as client:
        response = client.post("/v1/pipeline", json=body(f"{tricky_source}/slow"))
        pipeline = wait_for_pipeline(client, response.json()["pipeline"]["id"], timeout=30)
    assert pipeline["status"] == "ERROR"
    assert "did not finish within 2 s" in pipeline["results"][0]["error"]
    assert time.monotonic() - started < 15


def test_oversized_source_is_refused(
    strict_server: RunningServer, source_dir: Path, source_server: str
) -> None:
    (source_dir / "large.bin.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 300_000)
    with strict_server.client() as client:
        response = client.post("/v1/pipeline", json=body(f"{source_server}/large.bin.jpg"))
        pipeline = wait_for_pipeline(client, response.json()["pipeline"]["id"])
    assert "over the limit of 200000 bytes" in pipeline["results"][0]["error"]


# -- temp URLs ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def finished_output(strict_server: RunningServer, source_photos: dict[str, str]) -> dict:
    with strict_server.client() as client:
        response = client.post("/v1/pipeline", json=body(source_photos["cat.jpg"]))
        pipeline = wait_for_pipeline(client, response.json()["pipeline"]["id"])
    return pipeline["results"][0]["output_object"]


def _tamper(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    path = changes.pop("path", parts.path)
    query.update(changes)
    return f"{parts.scheme}://{parts.netloc}{path}?" + "&".join(f"{k}={v}" for k, v in query.items())


@pytest.mark.sqlite_only(
    "this server's own signed /v1/tmp URLs (file store); with S3, tmp_url is S3's presigned URL"
)
def test_tampered_temp_urls_are_403(strict_server: RunningServer, finished_output: dict) -> None:
    url = finished_output["tmp_url"]
    assert httpx.get(url).status_code == 200
    signature = parse_qs(urlsplit(url).query)["signature"][0]
    expires = int(parse_qs(urlsplit(url).query)["expires"][0])
    for bad in (
        _tamper(url, signature="0" * len(signature)),
        _tamper(url, signature=signature[:-1]),
        _tamper(url, expires=str(expires + 3600)),
        _tamper(url, path=urlsplit(url).path.replace(".jpg", ".png")),
        url.split("?")[0],
    ):
        response = httpx.get(bad)
        assert response.status_code == 403, bad
        assert response.json()["status"] == "REJECTED"


@pytest.mark.sqlite_only(
    "this server's own signed /v1/tmp URLs (file store); with S3, tmp_url is S3's presigned URL"
)
def test_path_traversal_is_refused_even_when_signed(strict_server: RunningServer) -> None:
    key_file = strict_server.data_dir / "url-signing-key"
    secret = key_file.read_text().strip().encode()
    expires = int(time.time()) + 600
    for key in ("../leapi.sqlite3", "p/../../leapi.sqlite3", ".lock", "p/1/.hidden", "p//x.jpg"):
        signature = hmac.new(secret, f"{key}\n{expires}".encode(), hashlib.sha256).hexdigest()
        encoded = key.replace(".", "%2E").replace("/", "%2F")
        for path in (f"/v1/tmp/{key}", f"/v1/tmp/{encoded}"):
            response = httpx.get(f"{strict_server.base_url}{path}?expires={expires}&signature={signature}")
            assert response.status_code in (403, 404), (path, response.status_code)
            assert b"SQLite" not in response.content


# -- keys ---------------------------------------------------------------------------------------------------


@pytest.mark.sqlite_only(
    "this server's own signed /v1/tmp URLs (file store); with S3, tmp_url is S3's presigned URL"
)
def test_api_keys_and_signatures_never_reach_the_logs(
    strict_server: RunningServer, finished_output: dict
) -> None:
    httpx.get(strict_server.base_url + "/v1/me/usage/", headers={"X-API-KEY": WRONG_KEY})
    httpx.post(strict_server.base_url + "/v1/pipeline", json={}, headers={"X-API-KEY": WRONG_KEY})
    httpx.get(strict_server.base_url + "/v1/me/usage/", headers=strict_server.headers())
    httpx.get(finished_output["tmp_url"])
    logs = strict_server.logs()
    assert "/v1/tmp/" in logs and "/v1/me/usage/" in logs  # the access log is on and was captured
    assert "SECRET" not in logs
    signature = parse_qs(urlsplit(finished_output["tmp_url"]).query)["signature"][0]
    assert signature not in logs
