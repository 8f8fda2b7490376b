"""Durability: a ``leapi-server`` SIGKILLed mid-processing finishes every accepted pipeline after restart,
charging each image exactly once and leaving no temp file orphaned or missing."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import time
from pathlib import Path

import httpx
import pytest

from devkit.server import QUICK_START_OPERATION, running_server, wait_for_pipeline

pytestmark = pytest.mark.sqlite_only(
    "reads the SQLite file and the local temp folder to check what a crash left (the PostgreSQL + S3 crash tests are tests/server/test_replicas.py)"
)

PIPELINES = 8
URLS_PER_PIPELINE = 2


@pytest.mark.slow
def test_sigkill_during_processing_then_restart(tmp_path: Path, source_photos: dict[str, str]) -> None:
    operation = {**QUICK_START_OPERATION, "width": 2400, "height": 1600, "quality": 90}
    with running_server(data_dir=tmp_path / "data", extra_args=("--workers", "1")) as server:
        with server.client() as client:
            ids = []
            for i in range(PIPELINES):
                urls = [source_photos["burger.jpg"], source_photos["cat.jpg"]][:URLS_PER_PIPELINE]
                response = client.post(
                    "/v1/pipeline",
                    json={
                        "source": {"http": {"url": urls}},
                        "operations": [operation],
                        "sink": {"temp_store": True},
                    },
                    headers={"Idempotency-Key": f"batch-{i}"},
                )
                assert response.status_code == 200
                ids.append(response.json()["pipeline"]["id"])

            # Kill once some work is done and some is still in flight.
            deadline = time.monotonic() + 60
            while True:
                statuses = [client.get(f"/v1/pipeline/{i}").json()["pipeline"]["status"] for i in ids]
                if "DONE" in statuses and "PROCESSING" in statuses[-2:]:
                    break
                assert time.monotonic() < deadline, statuses
                time.sleep(0.05)
        server.kill()
        assert server.process is not None and server.process.returncode == -9

        server.restart()
        with server.client() as client:
            # A client retrying its submits after the crash gets the same pipelines, not new charges.
            for i, pipeline_id in enumerate(ids):
                replay = client.post(
                    "/v1/pipeline",
                    json={
                        "source": {"http": {"url": [source_photos["burger.jpg"], source_photos["cat.jpg"]]}},
                        "operations": [operation],
                        "sink": {"temp_store": True},
                    },
                    headers={"Idempotency-Key": f"batch-{i}"},
                )
                assert replay.json()["pipeline"]["id"] == pipeline_id
            pipelines = [wait_for_pipeline(client, i, timeout=120) for i in ids]
            usage = client.get("/v1/me/usage/").json()
            for pipeline in pipelines:
                assert pipeline["status"] == "DONE", pipeline["errors"]
                assert len(pipeline["results"]) == URLS_PER_PIPELINE
                for result in pipeline["results"]:
                    assert result["error"] is None
                    download = httpx.get(result["output_object"]["tmp_url"])
                    assert download.status_code == 200 and len(download.content) > 10_000

        recovered = re.search(r"recovered (\d+) interrupted task", server.logs())
        assert recovered is not None and int(recovered.group(1)) >= 1  # work really was cut mid-flight
        assert usage["used"] == PIPELINES * URLS_PER_PIPELINE
        with sqlite3.connect(server.data_dir / "leapi.sqlite3") as db:
            ledger = db.execute("SELECT pipeline_id, credits FROM ledger ORDER BY pipeline_id").fetchall()
        assert ledger == [(i, URLS_PER_PIPELINE) for i in ids]

        keys = {r["output_object"]["s3_key"] for p in pipelines for r in p["results"]}
        on_disk = {
            p.relative_to(server.data_dir / "tmp").as_posix()
            for p in (server.data_dir / "tmp").rglob("*")
            if p.is_file()
        }
        assert on_disk == keys  # nothing orphaned (no partial or superseded files), nothing missing


def _worker_pids(server_pid: int) -> list[int]:
    """The pool's worker processes: children of the server started by multiprocessing's spawn."""
    pids = []
    for task in Path(f"/proc/{server_pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ")
            if b"spawn_main" in cmdline:
                pids.append(int(child))
    return pids


@pytest.mark.slow
def test_a_worker_killed_mid_image_is_replaced_and_its_image_redone(source_photos: dict[str, str]) -> None:
    operation = {**QUICK_START_OPERATION, "width": 2400, "height": 1600, "quality": 90}
    urls = [source_photos["burger.jpg"], source_photos["cat.jpg"]] * 3
    with running_server(extra_args=("--workers", "1")) as server, server.client() as client:
        assert server.process is not None
        response = client.post(
            "/v1/pipeline",
            json={"source": {"http": {"url": urls}}, "operations": [operation], "sink": {"temp_store": True}},
        )
        pipeline_id = response.json()["pipeline"]["id"]
        deadline = time.monotonic() + 30
        while client.get(f"/v1/pipeline/{pipeline_id}").json()["pipeline"]["started_at"] is None:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        time.sleep(0.2)
        victims = _worker_pids(server.process.pid)
        assert victims
        for pid in victims:
            os.kill(pid, signal.SIGKILL)
        pipeline = wait_for_pipeline(client, pipeline_id, timeout=120)
        assert client.get("/healthz").status_code == 200
        usage = client.get("/v1/me/usage/").json()
        assert "worker process died" in server.logs()
    assert pipeline["status"] == "DONE"
    assert [r["error"] for r in pipeline["results"]] == [None] * len(urls)
    assert usage["used"] == len(urls)
