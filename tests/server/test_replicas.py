"""Replicas: several ``leapi-server`` processes sharing one PostgreSQL database and one S3 bucket (moto).

A replica SIGKILLed with its workers mid-flight loses its leases when they expire (``--lease-seconds``,
short here) and the others finish its images; a PostgreSQL restart and an S3 outage delay work but lose
and double-charge nothing. Every check reads what a client sees (the API, the presigned URLs) and what is
really stored (the database's ledger, the bucket's objects).
"""

from __future__ import annotations

import collections
import contextlib
import http.server
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import psycopg
import pytest

from devkit.postgres import PostgresCluster
from devkit.s3 import MotoS3Server
from devkit.server import (
    QUICK_START_OPERATION,
    BackendSetup,
    RunningServer,
    ServerBackend,
    running_server,
    wait_for_pipeline,
)
from devkit.sources import serve_http

pytestmark = [pytest.mark.postgres_only("replicas need the shared PostgreSQL + S3 backend"), pytest.mark.slow]

#: Short leases: a killed replica's tasks are taken back within seconds, not the default 30.
LEASE_S = 3.0
WEBHOOK_SECRET = "whsec_" + "c2NhbGUtb3V0LXRlc3Qtc2VjcmV0"
#: One small image per pipeline: the tests are about who does the work, not about the engine.
OPERATION = {**QUICK_START_OPERATION, "width": 600, "height": 400, "restoration_level": 1}


@contextlib.contextmanager
def replicas(
    count: int, setup: BackendSetup, *, workers: int = 1, extra_args: tuple[str, ...] = ()
) -> Iterator[list[RunningServer]]:
    """``count`` servers on one database and bucket, each with its own data dir (local scratch)."""
    shared = ServerBackend(name="shared", setup=lambda _data_dir: setup)
    args = ("--workers", str(workers), "--lease-seconds", str(LEASE_S), "--rate-limit-per-minute", "0")
    args += ("--webhook-secret", WEBHOOK_SECRET, *extra_args)
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(running_server(backend=shared, extra_args=args)) for _ in range(count)]


@pytest.fixture
def shared_setup(postgres_backend: ServerBackend, tmp_path: Path) -> BackendSetup:
    """A fresh database and bucket for this test's replicas (named after a path of this test's own)."""
    return postgres_backend.setup(tmp_path / "replicas")


def submit(server: RunningServer, urls: list[str]) -> list[int]:
    ids = []
    with server.client() as client:
        for url in urls:
            body = {"source": {"http": {"url": url}}, "operations": [OPERATION], "sink": {"temp_store": True}}
            response = client.post("/v1/pipeline", json=body)
            assert response.status_code == 200, response.text
            ids.append(response.json()["pipeline"]["id"])
    return ids


def leases(database_url: str) -> dict[str, int]:
    """RUNNING tasks per boot holding them."""
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT claimed_by, COUNT(*) FROM tasks WHERE state='RUNNING' GROUP BY claimed_by"
        )
        return {str(boot): int(n) for boot, n in rows.fetchall()}


def ledger(database_url: str) -> list[tuple[int, int]]:
    with psycopg.connect(database_url) as conn:
        return [
            (int(p), int(c)) for p, c in conn.execute("SELECT pipeline_id, credits FROM ledger").fetchall()
        ]


def bucket_keys(moto: MotoS3Server, temp_store: str) -> set[str]:
    bucket = temp_store.removeprefix("s3://").split("/", 1)[0]
    listing = moto.client().list_objects_v2(Bucket=bucket)
    return {item["Key"] for item in listing.get("Contents", [])}


def check_presigned_download(output: dict[str, Any], moto: MotoS3Server) -> None:
    """``tmp_url`` is a presigned GET on the bucket that names it, and it downloads the image."""
    url = output["tmp_url"]
    parts = urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}" == moto.endpoint_url
    query = parse_qs(parts.query)
    assert query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"] and "X-Amz-Signature" in query
    assert parts.path == f"/{output['s3_bucket']}/{output['s3_key_prefix']}{output['s3_key']}"
    download = httpx.get(url, timeout=30)  # no API key, no AWS credentials: the URL is the credential
    assert download.status_code == 200, download.text[:300]
    assert download.headers["content-type"] == "image/jpeg" and download.content[:2] == b"\xff\xd8"


@pytest.mark.parametrize(("count", "pipelines"), [(2, 40), (3, 50)], ids=["2-replicas-40", "3-replicas-50"])
def test_sigkill_one_replica_mid_flight(
    shared_setup: BackendSetup,
    moto_s3: MotoS3Server,
    source_photos: dict[str, str],
    count: int,
    pipelines: int,
) -> None:
    photos = [source_photos["burger.jpg"], source_photos["cat.jpg"], source_photos["rocket.jpg"]]
    database_url = shared_setup.database_url
    assert database_url is not None and shared_setup.temp_store is not None
    with replicas(count, shared_setup) as servers:
        victim, survivors = servers[0], servers[1:]
        ids: list[int] = []
        for i in range(pipelines):  # every replica accepts its share
            ids += submit(servers[i % count], [photos[i % len(photos)]])

        # Kill the victim once it holds leases, i.e. with images of its own in flight.
        deadline = time.monotonic() + 60
        held: dict[str, int] = {}
        while time.monotonic() < deadline:
            held = leases(database_url)
            if len(held) == count:
                break
            time.sleep(0.05)
        assert len(held) == count, f"not every replica was busy: {held}"
        victim.kill()
        assert victim.process is not None and victim.process.returncode == -9

        survivor = survivors[0]
        with survivor.client() as client:
            finished = [wait_for_pipeline(client, pipeline_id, timeout=240) for pipeline_id in ids]
            usage = client.get("/v1/me/usage/").json()
        # Any live replica answers for any pipeline, including those the dead one accepted.
        with survivors[-1].client() as other:
            assert other.get(f"/v1/pipeline/{ids[0]}").json()["pipeline"]["status"] == "DONE"

    assert [p["status"] for p in finished] == ["DONE"] * pipelines
    assert usage["used"] == pipelines
    assert sorted(ledger(database_url)) == sorted((pipeline_id, 1) for pipeline_id in ids)
    outputs = [p["results"][0]["output_object"] for p in finished]
    for output in outputs:
        check_presigned_download(output, moto_s3)
    # No stray object: the bucket holds exactly the outputs the pipelines point at.
    assert bucket_keys(moto_s3, shared_setup.temp_store) == {
        o["s3_key_prefix"] + o["s3_key"] for o in outputs
    }
    # The victim's images were re-run by the others: some image needed a second attempt.
    with psycopg.connect(database_url) as conn:
        rerun = conn.execute("SELECT COUNT(*) FROM tasks WHERE attempts > 1").fetchone()
    assert rerun is not None and rerun[0] >= 1


def test_each_webhook_attempt_is_sent_by_one_replica_with_one_id(
    shared_setup: BackendSetup, source_photos: dict[str, str]
) -> None:
    """Three replicas poll the same deliveries; the receiver refuses each delivery's first attempt. Every
    delivery then arrives exactly twice (the refused try and its one retry), both times with one id."""
    calls: collections.Counter[str] = collections.Counter()
    bodies: dict[str, set[bytes]] = collections.defaultdict(set)
    lock = threading.Lock()

    class Receiver(http.server.BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            with lock:
                webhook_id = self.headers["webhook-id"]
                calls[webhook_id] += 1
                bodies[webhook_id].add(body)
                first = calls[webhook_id] == 1
            self.send_response(500 if first else 200)
            self.send_header("Content-Length", "0")
            self.end_headers()

    pipelines = 9
    with (
        serve_http(Receiver) as receiver_url,
        replicas(
            3, shared_setup, extra_args=("--webhook-retry-delays", "0.5,0.5", "--webhook-timeout", "5")
        ) as servers,
    ):
        ids = []
        for i in range(pipelines):
            body = {
                "source": {"http": {"url": source_photos["cat.jpg"]}},
                "notify_url": f"{receiver_url}/hook",
                "operations": [OPERATION],
                "sink": {"temp_store": True},
            }
            with servers[i % 3].client() as client:
                ids.append(client.post("/v1/pipeline", json=body).json()["pipeline"]["id"])
        with servers[0].client() as client:
            for pipeline_id in ids:
                wait_for_pipeline(client, pipeline_id, timeout=120)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                records = [client.get(f"/v1/pipeline/{p}/webhooks").json()["deliveries"] for p in ids]
                if all(r and r[0]["state"] == "DELIVERED" for r in records):
                    break
                time.sleep(0.2)
        time.sleep(2.0)  # a duplicate attempt, if any replica were to send one, would arrive by now
    assert len(calls) == pipelines, calls
    assert set(calls.values()) == {2}, calls
    assert all(len(b) == 1 for b in bodies.values()), "a retry sent another body"
    for record in records:
        assert [a["status_code"] for a in record[0]["attempts"]] == [500, 200], record


def test_quota_and_idempotency_hold_across_replicas(
    shared_setup: BackendSetup, source_photos: dict[str, str]
) -> None:
    """Submits racing on two replicas: one Idempotency-Key makes one pipeline, and a monthly quota of 5
    accepts exactly 5 images, however the requests are spread."""
    from concurrent.futures import ThreadPoolExecutor

    body = {
        "source": {"http": {"url": source_photos["cat.jpg"]}},
        "operations": [OPERATION],
        "sink": {"temp_store": True},
    }
    with replicas(2, shared_setup, extra_args=("--monthly-quota", "5")) as servers:

        def post(i: int, key: str | None) -> httpx.Response:
            headers = {"Idempotency-Key": key} if key else {}
            with servers[i % 2].client() as client:
                return client.post("/v1/pipeline", json=body, headers=headers)

        with ThreadPoolExecutor(max_workers=8) as pool:
            same_key = list(pool.map(lambda i: post(i, "order-1"), range(8)))
            racing = list(pool.map(lambda i: post(i, None), range(8)))
        with servers[1].client() as client:
            usage = client.get("/v1/me/usage/").json()
    assert [r.status_code for r in same_key] == [200] * 8
    assert len({r.json()["pipeline"]["id"] for r in same_key}) == 1
    # 1 credit for the idempotent pipeline, then 4 more fit in the quota of 5; the rest are 402.
    assert sorted(r.status_code for r in racing) == [200] * 4 + [402] * 4
    assert usage["used"] == 5


def test_postgres_restart_mid_run(
    shared_setup: BackendSetup, postgres_cluster: PostgresCluster, source_photos: dict[str, str]
) -> None:
    database_url = shared_setup.database_url
    assert database_url is not None
    with replicas(2, shared_setup) as servers:
        ids = [
            *submit(servers[0], [source_photos["burger.jpg"]] * 8),
            *submit(servers[1], [source_photos["cat.jpg"]] * 8),
        ]
        postgres_cluster.restart()  # every connection of both replicas is dropped mid-run
        ids += submit(servers[1], [source_photos["rocket.jpg"]] * 4)  # and they accept work again
        with servers[0].client() as client:
            finished = [wait_for_pipeline(client, pipeline_id, timeout=180) for pipeline_id in ids]
            usage = client.get("/v1/me/usage/").json()
    assert [p["status"] for p in finished] == ["DONE"] * len(ids)
    assert usage["used"] == len(ids)
    assert sorted(ledger(database_url)) == sorted((pipeline_id, 1) for pipeline_id in ids)


def test_s3_down_for_a_while(
    postgres_cluster: PostgresCluster, tmp_path_factory: pytest.TempPathFactory, source_photos: dict[str, str]
) -> None:
    """S3 (its own moto server, stopped until the server has given up on an upload) refuses the uploads:
    images are re-queued, and end DONE once it is back, or FAILED saying that storing failed; nothing is
    charged twice."""
    from devkit.s3 import s3_environment

    moto = MotoS3Server(tmp_path_factory.mktemp("moto-outage") / "moto.log")
    moto.start()
    try:
        moto.client().create_bucket(Bucket="outage")
        setup = BackendSetup(
            database_url=postgres_cluster.create_database("leapi_s3_outage"),
            temp_store="s3://outage/results",
            env=s3_environment(moto),
        )
        with replicas(1, setup, workers=2) as (server,):
            moto.stop()
            ids = submit(server, [source_photos["burger.jpg"], source_photos["cat.jpg"]] * 3)
            # Down until the server gave up on an upload (botocore's own retries exhausted) and re-queued it.
            deadline = time.monotonic() + 120
            while "re-queued (attempt 1)" not in server.logs():
                assert time.monotonic() < deadline, "no upload was refused while S3 was down"
                time.sleep(0.2)
            moto.start(port=moto.port)  # back, empty (moto keeps nothing): the bucket is made again
            moto.client().create_bucket(Bucket="outage")
            with server.client() as client:
                finished = [wait_for_pipeline(client, pipeline_id, timeout=180) for pipeline_id in ids]
                usage = client.get("/v1/me/usage/").json()
    finally:
        moto.stop()
    assert usage["used"] == len(ids)
    assert sorted(ledger(setup.database_url or "")) == sorted((pipeline_id, 1) for pipeline_id in ids)
    assert any(p["status"] == "DONE" for p in finished), "nothing was stored once S3 was back"
    for pipeline in finished:
        result = pipeline["results"][0]
        if pipeline["status"] == "DONE":
            assert result["output_object"]["tmp_url"].startswith(moto.endpoint_url)
        else:
            assert "could not be stored" in result["error"], result


def test_unreachable_database_or_bucket_refuses_to_start(
    tmp_path: Path, moto_s3: MotoS3Server, postgres_cluster: PostgresCluster
) -> None:
    from devkit.s3 import s3_environment
    from devkit.server import free_port

    def start(*args: str) -> subprocess.CompletedProcess[str]:
        command = [
            sys.executable,
            "-m",
            "leapi_server",
            "--api-key",
            "k",
            "--data-dir",
            str(tmp_path / "d"),
            *args,
        ]
        env = {**os.environ, **s3_environment(moto_s3)}
        return subprocess.run(command, check=False, capture_output=True, text=True, timeout=120, env=env)

    down = start(
        "--port", str(free_port()), "--database-url", f"postgresql://postgres@127.0.0.1:{free_port()}/x"
    )
    assert down.returncode == 5, down.stderr[-2000:]
    assert "cannot use the database at postgresql://postgres@127.0.0.1" in down.stderr

    url = postgres_cluster.create_database("leapi_refuse")
    missing = start(
        "--port", str(free_port()), "--database-url", url, "--temp-store", "s3://no-such-bucket/x"
    )
    assert missing.returncode == 6, missing.stderr[-2000:]
    assert "cannot use the temp store s3://no-such-bucket/x" in missing.stderr

    bad = start("--temp-store", "ftp://x")
    assert bad.returncode == 2 and "use file:// or s3://bucket/prefix" in bad.stderr
