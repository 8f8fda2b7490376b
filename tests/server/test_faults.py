"""Faults of ``leapi-server`` (issue 6): SIGKILLs at random points while 50 pipelines are in flight, an image
that gets stuck in the engine, a webhook receiver that is down and comes back.

Each test proves the same three things from the outside (HTTP, the SQLite ledger, the temp folder): every
accepted pipeline reaches DONE or ERROR, every image is charged exactly once, and the temp folder holds
exactly the outputs the pipelines reference.
"""

from __future__ import annotations

import contextlib
import http.server
import io
import itertools
import os
import random
import re
import sqlite3
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from PIL import Image

from devkit.server import QUICK_START_OPERATION, RunningServer, free_port, running_server, wait_for_pipeline
from devkit.sources import serve_http
from leapi.webhooks import generate_secret, verify_webhook

pytestmark = pytest.mark.sqlite_only(
    "checks the SQLite file and the local temp folder after worker and server crashes (the PostgreSQL + S3 crash tests are tests/server/test_replicas.py)"
)

#: Seed of the kill schedule; set LEAPI_FAULT_SEED to replay another schedule.
SEED = int(os.environ.get("LEAPI_FAULT_SEED", "6"))
PIPELINES = 50
KILLS_WHILE_PROCESSING = 3


def pipeline_body(urls: list[str], **operation: object) -> dict:
    return {
        "source": {"http": {"url": urls}},
        "operations": [{**QUICK_START_OPERATION, "width": 600, "height": 400, **operation}],
        "sink": {"temp_store": True},
    }


def temp_files(server: RunningServer) -> set[str]:
    root = server.data_dir / "tmp"
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def ledger(server: RunningServer) -> dict[int, int]:
    with sqlite3.connect(server.data_dir / "leapi.sqlite3") as db:
        rows = db.execute("SELECT pipeline_id, credits FROM ledger").fetchall()
    charged: dict[int, int] = {}
    for pipeline_id, credits in rows:
        assert pipeline_id not in charged, f"pipeline {pipeline_id} charged twice"
        charged[pipeline_id] = credits
    return charged


def stored_pipeline_ids(server: RunningServer) -> set[int]:
    with sqlite3.connect(server.data_dir / "leapi.sqlite3") as db:
        return {row[0] for row in db.execute("SELECT id FROM pipelines")}


# -- SIGKILL at random points ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_random_sigkills_with_50_pipelines_in_flight(
    tmp_path: Path, source_photos: dict[str, str], hostile_sources: dict[str, str]
) -> None:
    """Kill the server (and its workers, like a crash) once in the middle of the submissions and then at
    seeded random moments while the pool is busy; a client that got no answer resubmits with its
    Idempotency-Key. In the end: 50 pipelines, each terminal, each charged once, no file orphaned or missing."""
    rng = random.Random(SEED)
    good = [source_photos["burger.jpg"], source_photos["cat.jpg"], source_photos["rocket.jpg"]]
    broken = hostile_sources["missing.jpg"]
    bodies = []
    for i in range(PIPELINES):
        urls = [rng.choice(good) for _ in range(rng.randint(1, 3))]
        if i % 10 == 3:
            urls.append(broken)  # one failing image in a DONE pipeline
        if i % 10 == 7:
            urls = [broken]  # an ERROR pipeline
        bodies.append(pipeline_body(urls))
    ids: dict[int, int] = {}  # submission index -> pipeline id, once an answer was read

    def submit(client: httpx.Client, index: int) -> None:
        try:
            response = client.post(
                "/v1/pipeline", json=bodies[index], headers={"Idempotency-Key": f"fault-{SEED}-{index}"}
            )
        except httpx.TransportError:
            return  # no answer: accepted or not, the client cannot know; it resubmits with the same key
        assert response.status_code == 200, response.text
        ids[index] = response.json()["pipeline"]["id"]

    schedule = []
    with running_server(
        data_dir=tmp_path / "data",
        extra_args=("--workers", "2", "--rate-limit-per-minute", "0", "--monthly-quota", "0"),
    ) as server:
        # 1. A kill while 4 clients are submitting, paced so that the submissions outlast the kill.
        def paced_submit(client: httpx.Client, index: int) -> None:
            time.sleep(0.15 * (index % (PIPELINES // 2)) / 4)
            submit(client, index)

        with server.client(timeout=10) as client, ThreadPoolExecutor(4) as clients:
            for index in range(PIPELINES // 2):
                submit(client, index)
            pending = [
                clients.submit(paced_submit, client, index) for index in range(PIPELINES // 2, PIPELINES)
            ]
            time.sleep(rng.uniform(0.1, 0.6))
            server.kill()
            for future in pending:
                future.result()
        unanswered = sorted(set(range(PIPELINES)) - set(ids))
        schedule.append(("during submits", f"{len(unanswered)} unanswered"))
        assert unanswered, "the kill came after every submission was answered"

        # 2. Kills at random moments while the worker pool is busy.
        for _ in range(KILLS_WHILE_PROCESSING):
            server.start(port=server.port)
            with server.client(timeout=10) as client:
                for index in unanswered:
                    submit(client, index)
                unanswered = sorted(set(range(PIPELINES)) - set(ids))
                delay = rng.uniform(0.5, 3.0)
                time.sleep(delay)
                busy = client.get("/healthz").json()["busy_tasks"]
            schedule.append((f"after {delay:.2f} s", busy))
            server.kill()
            assert server.process is not None and server.process.returncode == -9

        # 3. Restart for good: everything accepted finishes.
        server.start(port=server.port)
        with server.client(timeout=10) as client:
            for index in unanswered:
                submit(client, index)
            assert len(ids) == PIPELINES, f"seed {SEED}: never answered: {set(range(PIPELINES)) - set(ids)}"
            pipelines = {i: wait_for_pipeline(client, ids[i], timeout=180) for i in range(PIPELINES)}
            usage = client.get("/v1/me/usage/").json()
            downloads = {
                result["output_object"]["s3_key"]: httpx.get(result["output_object"]["tmp_url"])
                for pipeline in pipelines.values()
                for result in pipeline["results"]
                if result["output_object"] is not None
            }
        logs = server.logs()
        on_disk = temp_files(server)
        charged = ledger(server)
        stored = stored_pipeline_ids(server)

    context = f"seed {SEED}, kills {schedule}"
    recovered = [int(n) for n in re.findall(r"recovered (\d+) interrupted task", logs)]
    assert sum(recovered) >= 1, f"no kill landed while work was in flight ({context})"

    # Every accepted pipeline is terminal, with one result per URL; only real failures fail.
    for index, pipeline in pipelines.items():
        urls = bodies[index]["source"]["http"]["url"]
        assert pipeline["status"] in ("DONE", "ERROR"), context
        assert [r["input_object"]["url"] for r in pipeline["results"]] == urls, context
        for url, result in zip(urls, pipeline["results"], strict=True):
            if url == broken:
                assert result["output_object"] is None and "HTTP 404" in result["error"], context
            else:
                # A good image may only fail by being interrupted too often (max attempts).
                assert result["error"] is None or "interrupted" in result["error"], (context, result)
        assert pipeline["status"] == ("ERROR" if urls == [broken] else pipeline["status"]), context

    # Charged exactly once: one ledger row per pipeline (no phantom pipeline from an unanswered submit).
    expected_charges = {ids[i]: len(bodies[i]["source"]["http"]["url"]) for i in range(PIPELINES)}
    assert stored == set(expected_charges), context
    assert charged == expected_charges, context
    assert usage["used"] == sum(expected_charges.values()), context

    # No temp file orphaned (partial or superseded), none missing; each one is the image it claims.
    referenced = set(downloads)
    assert on_disk == referenced, context
    assert all(download.status_code == 200 for download in downloads.values()), context
    sizes = {
        r["output_object"]["s3_key"]: tuple(r["output_object"]["size"])
        for p in pipelines.values()
        for r in p["results"]
        if r["output_object"] is not None
    }
    for key, download in downloads.items():
        assert Image.open(io.BytesIO(download.content)).size == sizes[key], (key, context)


def test_files_a_crash_leaves_behind_are_removed_at_restart(
    tmp_path: Path, source_photos: dict[str, str]
) -> None:
    """What a SIGKILL can leave in the temp folder, planted deterministically: a partial write, the output
    of a task that was re-run under another name, a file of a pipeline that does not exist. The restart
    removes exactly those; every referenced output stays downloadable."""
    with running_server(data_dir=tmp_path / "data", extra_args=("--workers", "1")) as server:
        with server.client() as client:
            answer = client.post(
                "/v1/pipeline", json=pipeline_body([source_photos["cat.jpg"]], width=90, height=60)
            )
            pipeline = wait_for_pipeline(client, answer.json()["pipeline"]["id"])
        server.kill()
        folder = server.data_dir / "tmp" / "p" / str(pipeline["id"])
        planted = [
            folder / f".{pipeline['results'][0]['output_object']['filename']}.part-4242",
            folder / "cat_OLDRUN.jpg",
            server.data_dir / "tmp" / "p" / "999999" / "ghost_abcdef.jpg",
        ]
        for path in planted:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"\xff\xd8\xff left behind")
        server.start(port=server.port)
        with server.client() as client:
            after = client.get(f"/v1/pipeline/{pipeline['id']}").json()["pipeline"]
        download = httpx.get(after["results"][0]["output_object"]["tmp_url"])
        logs, on_disk = server.logs(), temp_files(server)

    assert re.search(r"removed 3 orphaned temp file", logs)
    assert not any(path.exists() for path in planted)
    assert on_disk == {after["results"][0]["output_object"]["s3_key"]}
    assert download.status_code == 200 and Image.open(io.BytesIO(download.content)).size == (90, 60)


# -- an image stuck in the engine ------------------------------------------------------------------------------


def test_a_stuck_image_fails_alone_and_its_worker_is_replaced(source_photos: dict[str, str]) -> None:
    """One worker, a 1 s engine limit and one attempt per task: the slow image (a 54 MP restoration, many
    seconds) is stopped at the limit and fails with a timeout; the image queued behind it in the same pool
    is re-run without losing its only attempt; the replaced pool keeps working."""
    with running_server(
        extra_args=(
            "--workers",
            "1",
            "--max-image-seconds",
            "1",
            "--max-task-attempts",
            "1",
            "--rate-limit-per-minute",
            "0",
        )
    ) as server:
        with server.client() as client:
            slow = client.post(
                "/v1/pipeline",
                json=pipeline_body(
                    [source_photos["burger.jpg"]], width=9000, height=6000, restoration_level=10
                ),
            ).json()["pipeline"]["id"]
            queued = client.post(
                "/v1/pipeline", json=pipeline_body([source_photos["cat.jpg"]], width=90, height=60)
            ).json()["pipeline"]["id"]
            stuck = wait_for_pipeline(client, slow, timeout=60)
            behind = wait_for_pipeline(client, queued, timeout=60)
            after = wait_for_pipeline(
                client,
                client.post(
                    "/v1/pipeline", json=pipeline_body([source_photos["cat.jpg"]], width=90, height=60)
                ).json()["pipeline"]["id"],
                timeout=60,
            )
            usage = client.get("/v1/me/usage/").json()
            assert client.get("/healthz").status_code == 200
        logs = server.logs()
        on_disk = temp_files(server)
        leftover_notes = list((server.data_dir / "workers").glob("*.json"))

    assert stuck["status"] == "ERROR"
    (result,) = stuck["results"]
    assert result["output_object"] is None
    assert "longer than the server's limit of 1 s per image" in result["error"]
    assert stuck["errors"] == [f"{source_photos['burger.jpg']}: {result['error']}"]
    assert stuck["finished_at"] is not None
    assert "over the 1 s limit; stopping worker" in logs
    # The innocent neighbour kept its single attempt (no "interrupted 1 times" failure) and finished.
    assert f"pipeline {queued} image 0 re-queued: its pool was stopped" in logs
    assert behind["status"] == "DONE" and behind["results"][0]["error"] is None
    assert after["status"] == "DONE" and after["results"][0]["output_object"]["size"] == [90, 60]
    assert leftover_notes == [], "the killed worker's note was removed with its pool"
    assert usage["used"] == 3  # one credit per image, the stuck one included, nothing charged twice
    assert on_disk == {
        p["results"][0]["output_object"]["s3_key"] for p in (behind, after)
    }  # the killed worker left no partial file behind


# -- a webhook receiver that is down, then back ----------------------------------------------------------------

RETRY_DELAYS = (0.4, 0.8, 1.2)
SECRET = generate_secret()


class FlakyReceiver:
    """A webhook receiver on a fixed port that can be switched off (connection refused) and on."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/hooks/leapi"
        self.calls: list[tuple[float, dict[str, str], bytes]] = []
        self._serving: contextlib.ExitStack | None = None

    def up(self) -> None:
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                payload = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                receiver.calls.append((time.time(), {k.lower(): v for k, v in self.headers.items()}, payload))
                self.send_response(204)
                self.end_headers()

        self._serving = contextlib.ExitStack()
        self._serving.enter_context(serve_http(Handler, port=self.port))

    def down(self) -> None:
        if self._serving is not None:
            self._serving.close()
            self._serving = None


@pytest.fixture
def flaky_receivers() -> Iterator[list[FlakyReceiver]]:
    made: list[FlakyReceiver] = []
    yield made
    for receiver in made:
        receiver.down()


def deliveries(client: httpx.Client, pipeline_id: int) -> dict:
    """The pipeline's one webhook delivery (an empty stand-in until the pipeline has finished)."""
    found = client.get(f"/v1/pipeline/{pipeline_id}/webhooks").json()["deliveries"]
    assert len(found) <= 1
    return found[0] if found else {"state": None, "attempts": []}


def wait_for(predicate, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


def test_webhook_receiver_down_then_back(
    flaky_receivers: list[FlakyReceiver], source_photos: dict[str, str]
) -> None:
    """Two receivers, both down when their pipelines finish. One comes back after the second attempt: it
    gets exactly one delivery, with the delivery id recorded from the first attempt. The other stays down:
    the retries follow the configured delays, then stop."""
    back, gone = FlakyReceiver(), FlakyReceiver()
    flaky_receivers += [back, gone]
    with (
        running_server(
            extra_args=(
                "--workers",
                "1",
                "--webhook-retry-delays",
                ",".join(map(str, RETRY_DELAYS)),
                "--webhook-timeout",
                "1",
            ),
            env={"LEAPI_WEBHOOK_SECRET": SECRET},
        ) as server,
        server.client() as client,
    ):
        ids = {}
        for receiver in (back, gone):
            body = {
                **pipeline_body([source_photos["cat.jpg"]], width=90, height=60),
                "notify_url": receiver.url,
            }
            ids[receiver.url] = client.post("/v1/pipeline", json=body).json()["pipeline"]["id"]
        wait_for(lambda: len(deliveries(client, ids[back.url])["attempts"]) == 2)
        back.up()
        wait_for(lambda: deliveries(client, ids[gone.url])["state"] == "FAILED")
        wait_for(lambda: deliveries(client, ids[back.url])["state"] == "DELIVERED")
        time.sleep(max(RETRY_DELAYS) + 0.5)  # nothing more may arrive after the acknowledged attempt
        delivered, failed = deliveries(client, ids[back.url]), deliveries(client, ids[gone.url])

    # The receiver that came back: one call, signed, carrying the delivery id of every attempt.
    assert len(back.calls) == 1
    _at, headers, payload = back.calls[0]
    assert headers["webhook-id"] == delivered["id"]
    assert verify_webhook(SECRET, headers, payload) == delivered["id"]
    assert [a["status_code"] for a in delivered["attempts"]] == [None, None, 204]
    assert all("Connect" in a["error"] for a in delivered["attempts"][:2])

    # The receiver that stayed down: first try plus one retry per delay, each after its delay, then stop.
    assert gone.calls == []
    assert failed["next_attempt_at"] is None and len(failed["attempts"]) == 1 + len(RETRY_DELAYS)
    times = [
        datetime.fromisoformat(a["started_at"]).replace(tzinfo=UTC).timestamp() for a in failed["attempts"]
    ]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    for gap, delay in zip(gaps, RETRY_DELAYS, strict=False):
        assert delay - 0.05 <= gap <= delay + 1.5, (gaps, RETRY_DELAYS)
