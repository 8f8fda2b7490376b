"""Rate limit and monthly quota: the documented REJECTED bodies, HTTP codes, and no credit charged."""

from __future__ import annotations

import httpx

from devkit.server import QUICK_START_OPERATION, running_server
from leapi.constants import RATE_LIMIT_REASON
from leapi.models import SubmitResponse


def body(urls: list[str]) -> dict:
    return {
        "source": {"http": {"url": urls}},
        "operations": [QUICK_START_OPERATION],
        "sink": {"temp_store": True},
    }


def test_rate_limit_rejects_with_the_documented_text(source_photos: dict[str, str]) -> None:
    with (
        running_server(
            api_keys=("key-a", "key-b"), extra_args=("--workers", "1", "--rate-limit-per-minute", "3")
        ) as server,
        server.client("key-a") as a,
        server.client("key-b") as b,
    ):
        answers = [a.post("/v1/pipeline", json=body([source_photos["cat.jpg"]])) for _ in range(3)]
        assert [r.status_code for r in answers] == [200, 200, 200]
        limited = a.post("/v1/pipeline", json=body([source_photos["cat.jpg"]]))
        assert limited.status_code == 429
        assert limited.json() == {"status": "REJECTED", "reason": "Too Many Requests. Rate limit exceeded."}
        assert limited.json()["reason"] == RATE_LIMIT_REASON
        assert SubmitResponse.model_validate(limited.json()).is_rate_limited
        assert 1 <= int(limited.headers["Retry-After"]) <= 60
        # Rejected requests cost nothing; the limit is per key; reads are not limited.
        assert a.get("/v1/me/usage/").json()["used"] == 3
        assert b.post("/v1/pipeline", json=body([source_photos["cat.jpg"]])).status_code == 200
        assert all(a.get(f"/v1/pipeline/{r.json()['pipeline']['id']}").status_code == 200 for r in answers)
        assert a.get("/v1/me/usage/").json()["rate_limit_per_minute"] == 3


def test_monthly_quota_rejects_without_charging(source_photos: dict[str, str]) -> None:
    url = source_photos["cat.jpg"]
    with running_server(
        extra_args=("--workers", "1", "--monthly-quota", "3", "--rate-limit-per-minute", "0")
    ) as server:
        with server.client() as client:
            assert client.post("/v1/pipeline", json=body([url, url])).status_code == 200
            over = client.post("/v1/pipeline", json=body([url, url]))
            assert over.status_code == 402
            assert over.json()["status"] == "REJECTED"
            assert over.json()["reason"].startswith(
                "Monthly quota exceeded: this request needs 2 credit(s), 1 of 3 remain"
            )
            usage = client.get("/v1/me/usage/").json()
            assert (usage["used"], usage["quota"], usage["remaining"]) == (2, 3, 1)
            assert client.post("/v1/pipeline", json=body([url])).status_code == 200
            assert client.post("/v1/pipeline", json=body([url])).status_code == 402
            assert client.get("/v1/me/usage/").json()["remaining"] == 0
        # The quota is per key and survives a restart (the ledger is in SQLite).
        server.restart()
        assert httpx.get(server.base_url + "/v1/me/usage/", headers=server.headers()).json()["used"] == 3
