"""``leapi-server --compat docs``: only what the LEAPI docs promise, every extension switched off.

The server runs in-process on a :class:`FakeClock` (real worker processes), so the rate-limit window is
moved rather than waited for.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from devkit.server import (
    FakeClock,
    InProcessServer,
    in_process_server,
    quick_start_body,
    used_credits_of,
    wait_for_pipeline,
)
from leapi.constants import (
    IDEMPOTENCY_KEY_HEADER,
    IDEMPOTENCY_SUPPORT_HEADER,
    IDEMPOTENT_REPLAY_HEADER,
    RATE_LIMIT_REASON,
)
from leapi.models import Usage
from leapi_server.__main__ import build_parser, config_from_args

KEYS = ("docs-key", "rate-key", "quota-key")


@pytest.fixture(scope="module")
def docs_server() -> Iterator[InProcessServer]:
    with in_process_server(
        clock=FakeClock(), api_keys=KEYS, compat="docs", rate_limit_per_minute=2, monthly_quota=0
    ) as server:
        yield server


def _no_extension_headers(response: httpx.Response) -> None:
    for name in (IDEMPOTENCY_SUPPORT_HEADER, IDEMPOTENT_REPLAY_HEADER, "Retry-After"):
        assert name not in response.headers, name
    assert not [h for h in response.headers if h.lower().startswith(("ratelimit", "x-ratelimit"))]


def test_the_cli_flag() -> None:
    assert config_from_args(build_parser().parse_args(["--api-key", "k", "--compat", "docs"]), {}).docs_only
    assert not config_from_args(build_parser().parse_args(["--api-key", "k"]), {}).docs_only
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--api-key", "k", "--compat", "strict"])


def test_idempotency_key_is_ignored_and_not_advertised(
    docs_server: InProcessServer, source_photos: dict[str, str]
) -> None:
    payload = quick_start_body(source_photos["cat.jpg"])
    headers = {IDEMPOTENCY_KEY_HEADER: "the-same-key"}
    with docs_server.client() as client:
        used = used_credits_of(client.get("/v1/me/usage/").json())
        first = client.post("/v1/pipeline", json=payload, headers=headers)
        docs_server.advance(61)  # out of the rate limit's window
        second = client.post("/v1/pipeline", json=payload, headers=headers)
        docs_server.advance(61)
        health = client.get("/healthz")
        usage = client.get("/v1/me/usage/")
    for response in (first, second, health, usage):
        _no_extension_headers(response)
    assert first.json()["status"] == second.json()["status"] == "ACCEPTED"
    # Two pipelines and two credits: the key deduped nothing.
    assert first.json()["pipeline"]["id"] != second.json()["pipeline"]["id"]
    assert used_credits_of(usage.json()) == used + 2
    assert health.json()["extensions"] == []


def test_rate_limit_is_a_200_rejected_without_hints_and_refusals_count(
    docs_server: InProcessServer, source_photos: dict[str, str]
) -> None:
    payload = quick_start_body(source_photos["cat.jpg"])
    with docs_server.client("rate-key") as client:
        docs_server.advance(61)
        assert [client.post("/v1/pipeline", json=payload).json()["status"] for _ in range(2)] == [
            "ACCEPTED"
        ] * 2
        docs_server.advance(50)
        refused = [client.post("/v1/pipeline", json=payload) for _ in range(2)]
        docs_server.advance(11)
        # The accepted pair left the window; the two refusals 11 s ago did not, and they count.
        still_refused = client.post("/v1/pipeline", json=payload)
        docs_server.advance(60)
        accepted = client.post("/v1/pipeline", json=payload)
    for response in [*refused, still_refused]:
        assert response.status_code == 200
        assert response.json() == {"status": "REJECTED", "reason": RATE_LIMIT_REASON}
        _no_extension_headers(response)
    assert accepted.json()["status"] == "ACCEPTED"


def test_invalid_and_over_quota_requests_are_200_rejected(docs_server: InProcessServer) -> None:
    with docs_server.client("quota-key") as client:
        docs_server.advance(61)
        invalid = client.post("/v1/pipeline", json={"source": {"http": {"url": "http://127.0.0.1/a.jpg"}}})
        malformed = client.post("/v1/pipeline", content=b"{", headers={"Content-Type": "application/json"})
        bad_key = client.get("/v1/me/usage/", headers={"X-API-KEY": "wrong"})
        unknown = client.get("/v1/pipeline/999999")
    assert invalid.status_code == malformed.status_code == 200
    assert invalid.json()["status"] == malformed.json()["status"] == "REJECTED"
    assert invalid.json()["reason"].startswith("operations")
    assert bad_key.status_code == 401 and bad_key.json()["status"] == "REJECTED"  # (the issue allows 401)
    assert unknown.status_code == 404


def test_quota_exhausted_is_200_rejected(source_photos: dict[str, str]) -> None:
    with (
        in_process_server(compat="docs", rate_limit_per_minute=0, monthly_quota=1) as server,
        server.client() as client,
    ):
        payload = quick_start_body(source_photos["cat.jpg"])
        assert client.post("/v1/pipeline", json=payload).json()["status"] == "ACCEPTED"
        over = client.post("/v1/pipeline", json=payload)
    assert over.status_code == 200
    assert over.json()["status"] == "REJECTED" and "quota" in over.json()["reason"].lower()


def test_failed_image_has_no_result_error_and_usage_has_another_shape(
    docs_server: InProcessServer, source_photos: dict[str, str], source_server: str
) -> None:
    missing = f"{source_server}/no-such-photo.jpg"
    with docs_server.client() as client:
        docs_server.advance(61)
        answer = client.post("/v1/pipeline", json=quick_start_body([source_photos["cat.jpg"], missing]))
        pipeline = wait_for_pipeline(client, answer.json()["pipeline"]["id"])
        usage = client.get("/v1/me/usage/").json()
    assert pipeline["status"] == "DONE" and len(pipeline["results"]) == 2
    assert all("error" not in result for result in pipeline["results"])
    assert pipeline["results"][1]["output_object"] is None
    assert [line.split(": ")[0] for line in pipeline["errors"]] == [missing]
    # The same figures as the default body, under names no client may rely on.
    assert "used" not in usage and usage["account"]["images_processed_this_month"] >= 3
    parsed = Usage.model_validate(usage)
    assert parsed.used is None and parsed.credits_remaining is None
