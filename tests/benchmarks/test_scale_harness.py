"""The scale bench's own parts (``tests/bench/scale_*.py``): what they count must be right before their
figures go into docs/benchmarks.md. The bench itself runs with ``make bench``; these run in ``make test``."""

from __future__ import annotations

import io
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from tests.bench import scale_measure as m
from tests.bench.scale_sources import (
    SourceApp,
    serve_scale_sources,
    source_path,
    with_comment,
    write_variants,
)


@pytest.fixture(scope="module")
def variants(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list]:
    folder = tmp_path_factory.mktemp("variants")
    return folder, write_variants(folder, 6)


def _log_line(when: str, method: str, path: str, status: int = 200) -> str:
    return f'{when} INFO uvicorn.access: 127.0.0.1:4711 - "{method} {path} HTTP/1.1" {status}\n'


def test_access_log_kinds_pipelines_and_offsets(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    log.write_text(
        _log_line("2026-12-01 12:00:00,000", "GET", "/healthz")
        + _log_line("2026-12-01 12:00:00,100", "POST", "/v1/pipeline")
        + "2026-12-01 12:00:00,150 INFO leapi_server: pipeline 7 accepted\n"
        + _log_line("2026-12-01 12:00:00,200", "GET", "/v1/pipeline/7")
        + _log_line("2026-12-01 12:00:01,000", "GET", "/v1/me/usage/")
    )
    first, offset = m.read_access_log(log)
    assert [a.kind for a in first] == [m.POST_PIPELINE, m.GET_PIPELINE, m.GET_USAGE]
    assert first[1].at - first[0].at == pytest.approx(0.1, abs=1e-3)
    with open(log, "a") as handle:
        handle.write(_log_line("2026-12-01 12:00:02,000", "GET", "/v1/tmp/p/7/a_x.jpg?expires=1&signature=R"))
        handle.write(_log_line("2026-12-01 12:00:02,500", "POST", "/v1/pipeline", 429))
    later, _ = m.read_access_log(log, offset)
    assert [(a.kind, a.tmp_pipeline_id, a.status) for a in later] == [
        (m.GET_TMP, 7, 200),
        (m.POST_PIPELINE, None, 429),
    ]
    assert m.counts_by_kind(first + later) == {
        m.POST_PIPELINE: 2,
        m.GET_PIPELINE: 1,
        m.GET_USAGE: 1,
        m.OTHER: 0,
        m.GET_TMP: 1,
    }


def test_max_per_sliding_window() -> None:
    # 4 in [0, 60), 5 in [59.5, 119.5): a window that starts anywhere counts, not only on the minute
    times = [119.2, 0.0, 1.0, 59.0, 59.5, 100.0, 118.9, 119.0]
    assert m.max_per_window(times) == (5, 59.5)
    assert m.max_per_window(times, window_s=0.5) == (3, 118.9)
    assert m.max_per_window([]) == (0, None)


def test_task_times_from_the_event_log() -> None:
    def row(task: str, event: str, second: int, map_index: int = -1, try_number: int = 1) -> dict:
        when = f"2026-12-01T12:00:{second:02d}+00:00"
        return {
            "task_id": task,
            "map_index": map_index,
            "event": event,
            "when": when,
            "try_number": try_number,
        }

    events = [
        row("plan", "running", 0),
        row("plan", "up_for_retry", 1),
        row("plan", "running", 2, try_number=2),
        row("plan", "success", 5, try_number=2),
        row("batch", "running", 5, 0),
        row("batch", "deferred", 15, 0),
        row("batch", "running", 40, 0),
        row("batch", "success", 43, 0),
        {"task_id": None, "event": "trigger", "when": "2026-12-01T12:00:01+00:00"},
    ]
    times = m.task_times(events)
    assert (times.starts, times.deferrals, times.slot_s) == (4, 1, 1 + 3 + 10 + 3)
    assert times.spans["batch[0]"]["running_s"] == 13
    assert (times.spans["batch[0]"]["tries"], times.spans["plan"]["tries"]) == (1, 2)
    assert times.spans["plan"]["try_start"] == datetime.fromisoformat("2026-12-01T12:00:02+00:00")
    assert times.spans["batch[0]"]["end"] == datetime.fromisoformat("2026-12-01T12:00:43+00:00")
    assert times.spans["plan"]["state"] == "success"


def test_rate_limit_waits_are_read_from_task_logs(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "attempt=1.log").write_text(
        '{"event":"Batch 0: 12 submit(s); waited 7.5s on the LEAPI rate limit"}\n'
    )
    (tmp_path / "attempt=1.log").write_text("Batch 1: 3 submit(s); waited 0.0s on the LEAPI rate limit\n")
    assert m.rate_limit_waits(tmp_path) == (1, 7.5)


def test_a_comment_segment_keeps_the_jpeg_and_its_pixels(variants: tuple[Path, list]) -> None:
    from PIL import Image

    folder, written = variants
    plain = (folder / written[0].file_name).read_bytes()
    marked = with_comment(plain, b"/s/dag-0000001/x.jpg")
    assert marked != plain
    assert Image.open(io.BytesIO(marked)).tobytes() == Image.open(io.BytesIO(plain)).tobytes()
    with pytest.raises(ValueError, match="not a JPEG"):
        with_comment(b"\x89PNG", b"x")


async def test_every_source_url_has_its_own_bytes_and_etag(variants: tuple[Path, list]) -> None:
    folder, written = variants
    app = SourceApp(folder)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://sources") as client:
        one = await client.get(source_path(1, written[0]))
        two = await client.get(source_path(2, written[0]))
        head = await client.head(source_path(1, written[0]))
        missing = await client.get("/s/1/not-a-variant.jpg")
        stats = (await client.get("/_stats")).json()
    assert one.status_code == two.status_code == head.status_code == 200
    assert one.content != two.content and one.headers["etag"] != two.headers["etag"]
    assert head.content == b"" and head.headers["etag"] == one.headers["etag"]
    assert int(head.headers["content-length"]) == len(one.content)
    assert missing.status_code == 404
    assert stats == {"GET": 3, "HEAD": 1, "other": 0}


def test_the_source_server_runs_as_its_own_process(variants: tuple[Path, list]) -> None:
    folder, written = variants
    with serve_scale_sources(folder) as server:
        response = httpx.get(server.base_url + source_path(5, written[1]))
        assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
        assert server.stats()["GET"] == 1


@pytest.mark.slow
def test_the_fair_baseline_writes_one_object_and_one_row_per_image(
    variants: tuple[Path, list], leapi_server, moto_s3, aws_conn: str, s3_bucket: str
) -> None:
    import pyarrow.parquet as pq

    from tests.bench.scale_fair import FairSettings, fair_baseline

    folder, written = variants
    with serve_scale_sources(folder) as sources:
        manifest = [
            {
                "image_id": f"img-{i}",
                "source_url": sources.base_url + source_path(i, written[i % len(written)]),
            }
            for i in range(23)  # pipelines of 10, 10 and 3
        ]
        outcome = fair_baseline(
            base_url=leapi_server.base_url,
            api_key=leapi_server.api_key,
            manifest=manifest,
            operation={"op": "preset/marketplace", "width": 128, "height": 128},
            s3_endpoint=moto_s3.endpoint_url,
            bucket=s3_bucket,
            prefix="fair",
            settings=FairSettings(poll_interval_s=0.2),
        )
    assert (outcome.rows, outcome.done, outcome.objects) == (23, 23, 23)
    assert outcome.requests[m.POST_PIPELINE] == 3
    s3 = moto_s3.client()
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=s3_bucket, Prefix="fair/feed/")["Contents"]]
    assert len(keys) == 23 and all(k.endswith(".jpg") for k in keys)
    body = s3.get_object(Bucket=s3_bucket, Key="fair/results/results.parquet")["Body"].read()
    table = pq.read_table(io.BytesIO(body))
    assert sorted(table["image_id"].to_pylist()) == sorted(r["image_id"] for r in manifest)
    assert set(table["status"].to_pylist()) == {"done"}
