"""Webhooks: delivery on finish, retries after the configured delays, signatures, recorded attempts.

The documented schedule (3, 6 and 10 minutes, then no more) runs on a fake clock in ``test_clock.py``.
"""

from __future__ import annotations

import contextlib
import http.server
import itertools
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import pytest

from devkit.server import QUICK_START_OPERATION, RunningServer, running_server, wait_for_pipeline
from devkit.sources import serve_http
from leapi.models import WebhookEvent
from leapi.webhooks import (
    WebhookVerificationError,
    generate_secret,
    sign,
    signed_headers,
    verify_webhook,
)

SECRET = generate_secret()
RETRY_DELAYS = (0.5, 0.5, 0.5)


@dataclass
class Received:
    at: float
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """A webhook receiver answering from a script of status codes (the last one repeats)."""

    statuses: list[int]
    calls: list[Received] = field(default_factory=list)
    url: str = ""

    def handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                payload = self.rfile.read(length)
                receiver.calls.append(
                    Received(time.time(), {k.lower(): v for k, v in self.headers.items()}, payload)
                )
                index = min(len(receiver.calls) - 1, len(receiver.statuses) - 1)
                self.send_response(receiver.statuses[index])
                self.send_header("Content-Length", "0")
                self.end_headers()

        return Handler


@pytest.fixture
def receiver_factory() -> Iterator:
    with contextlib.ExitStack() as servers:

        def make(statuses: list[int]) -> Receiver:
            receiver = Receiver(statuses)
            base_url = servers.enter_context(serve_http(receiver.handler()))
            receiver.url = f"{base_url}/hooks/leapi?customer=7"
            return receiver

        yield make


@pytest.fixture(scope="module")
def webhook_server() -> Iterator[RunningServer]:
    with running_server(
        extra_args=(
            "--workers",
            "1",
            "--webhook-retry-delays",
            ",".join(map(str, RETRY_DELAYS)),
            "--webhook-timeout",
            "2",
        ),
        env={"LEAPI_WEBHOOK_SECRET": SECRET},
    ) as server:
        yield server


def submit_with_webhook(server: RunningServer, source_url: str, notify_url: str) -> tuple[int, dict]:
    payload = {
        "source": {"http": {"url": source_url}},
        "notify_url": notify_url,
        "operations": [{**QUICK_START_OPERATION, "width": 90, "height": 60}],
        "sink": {"temp_store": True},
    }
    with server.client() as client:
        response = client.post("/v1/pipeline", json=payload)
        assert response.status_code == 200
        pipeline_id = response.json()["pipeline"]["id"]
        assert response.json()["pipeline"]["notify_url"] == notify_url
        return pipeline_id, wait_for_pipeline(client, pipeline_id)


def wait_until(predicate, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        time.sleep(0.05)


def test_receiver_failing_twice_then_succeeding(
    webhook_server: RunningServer, receiver_factory, source_photos: dict[str, str]
) -> None:
    receiver = receiver_factory([500, 503, 200])
    pipeline_id, pipeline = submit_with_webhook(webhook_server, source_photos["burger.jpg"], receiver.url)
    wait_until(lambda: len(receiver.calls) >= 3)
    time.sleep(sum(RETRY_DELAYS) + 0.5)  # no attempt after the acknowledged one
    assert len(receiver.calls) == 3

    delivery_id = receiver.calls[0].headers["webhook-id"]
    assert {call.headers["webhook-id"] for call in receiver.calls} == {delivery_id}  # stable across retries
    assert len({call.body for call in receiver.calls}) == 1  # the same bytes every time
    for call in receiver.calls:
        assert verify_webhook(SECRET, call.headers, call.body) == delivery_id
        assert call.headers["content-type"] == "application/json"
    gaps = [b.at - a.at for a, b in itertools.pairwise(receiver.calls)]
    assert all(gap >= RETRY_DELAYS[0] - 0.05 for gap in gaps), gaps

    event = WebhookEvent.model_validate(json.loads(receiver.calls[0].body))
    assert event.id == pipeline_id and event.status is not None and event.status.value == "DONE"
    assert event.pipeline is not None and event.pipeline.results[0].output_object is not None
    assert event.pipeline.results[0].output_object.size == pipeline["results"][0]["output_object"]["size"]

    with webhook_server.client() as client:
        deliveries = client.get(f"/v1/pipeline/{pipeline_id}/webhooks").json()["deliveries"]
    (delivery,) = deliveries
    assert delivery["state"] == "DELIVERED" and delivery["url"] == receiver.url
    assert delivery["id"] == receiver.calls[0].headers["webhook-id"]
    assert [a["status_code"] for a in delivery["attempts"]] == [500, 503, 200]
    assert [a["attempt"] for a in delivery["attempts"]] == [1, 2, 3]
    assert delivery["attempts"][0]["error"] == "receiver answered HTTP 500"


def test_unreachable_receiver_counts_as_failure(
    webhook_server: RunningServer, source_photos: dict[str, str]
) -> None:
    with socket_closed_port() as port:
        pipeline_id, pipeline = submit_with_webhook(
            webhook_server, source_photos["cat.jpg"], f"http://127.0.0.1:{port}/x"
        )
    assert pipeline["status"] == "DONE"  # the pipeline does not depend on its webhook
    with webhook_server.client() as client:
        wait_until(
            lambda: (
                len(client.get(f"/v1/pipeline/{pipeline_id}/webhooks").json()["deliveries"][0]["attempts"])
                >= 2
            )
        )
        (delivery,) = client.get(f"/v1/pipeline/{pipeline_id}/webhooks").json()["deliveries"]
    assert delivery["attempts"][0]["status_code"] is None and "Connect" in delivery["attempts"][0]["error"]


def test_failed_pipeline_also_notifies(
    webhook_server: RunningServer, receiver_factory, hostile_sources: dict[str, str]
) -> None:
    receiver = receiver_factory([204])
    pipeline_id, pipeline = submit_with_webhook(
        webhook_server, hostile_sources["not-an-image.jpg"], receiver.url
    )
    assert pipeline["status"] == "ERROR"
    wait_until(lambda: len(receiver.calls) == 1)
    event = json.loads(receiver.calls[0].body)
    assert event["id"] == pipeline_id and event["status"] == "ERROR"
    assert event["pipeline"]["errors"]


class socket_closed_port:
    """A localhost port with nothing listening (bound then released)."""

    def __enter__(self) -> int:
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return sock.getsockname()[1]

    def __exit__(self, *exc: object) -> None:
        return None


# -- leapi.webhooks ---------------------------------------------------------------------------------


def test_sign_matches_the_standard_webhooks_reference_vector() -> None:
    # Test vector from the Standard Webhooks specification's reference libraries.
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    msg_id = "msg_p5jXN8AQM9LWM0D4loKWxJek"
    timestamp = 1614265330
    body = b'{"test": 2432232314}'
    assert sign(secret, msg_id, timestamp, body) == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_verify_rejects_tampering_and_replays() -> None:
    body = b'{"id": 1, "status": "DONE"}'
    headers = signed_headers(SECRET, "msg_1", body)
    assert verify_webhook(SECRET, headers, body) == "msg_1"
    assert verify_webhook(SECRET, {k.upper(): v for k, v in headers.items()}, body.decode()) == "msg_1"
    with pytest.raises(WebhookVerificationError):
        verify_webhook(SECRET, headers, body + b" ")
    with pytest.raises(WebhookVerificationError):
        verify_webhook(generate_secret(), headers, body)
    with pytest.raises(WebhookVerificationError):
        verify_webhook(SECRET, {**headers, "webhook-id": "msg_2"}, body)
    with pytest.raises(WebhookVerificationError, match="away from now"):
        verify_webhook(SECRET, headers, body, now=time.time() + 3600)
    with pytest.raises(WebhookVerificationError, match="missing"):
        verify_webhook(SECRET, {}, body)
    # During a secret rotation several signatures may be sent; one match is enough.
    rotated = {**headers, "webhook-signature": "v1,AAAA " + headers["webhook-signature"]}
    assert verify_webhook(SECRET, rotated, body) == "msg_1"


def test_plain_string_secrets_work_too() -> None:
    headers = signed_headers("not-a-whsec-secret", "msg_9", b"{}", timestamp=int(time.time()))
    assert verify_webhook("not-a-whsec-secret", headers, b"{}") == "msg_9"
    assert httpx.Headers(headers)["webhook-signature"].startswith("v1,")
