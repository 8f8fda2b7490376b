"""The scale bench's fair baseline: the catalog's work done by a competent script without Airflow.

What a good engineer would write to enhance a manifest into a bucket, doing the same work as
``marketplace_feed_etl``'s batches: submit pipelines of 10 URLs, wait for them, download every result,
upload it to the same S3 bucket under the feed's key layout (``feed/{preset}/{image_id}/{sha256:.16}.jpg``),
and write a Parquet result table with one row per image. One process, three stages running at once:

* **submit**: ``submit_concurrency`` POSTs in flight, each with an ``Idempotency-Key`` (429 and 5xx answers
  and dropped connections are retried after ``Retry-After`` or a short backoff);
* **wait**: one poller reads the pending pipelines in submission order every ``poll_interval_s`` and stops
  a round at the first one still PROCESSING (the server works through its queue in order), so status
  reads stay near one per pipeline;
* **transfer**: as soon as a pipeline is DONE its results go to ``transfer_concurrency`` download tasks
  (httpx, asyncio) whose uploads run on a thread pool of boto3 clients (boto3 is thread-safe per client,
  and releases the interpreter lock while it waits on the socket).

The result table is written once at the end (``<prefix>/results/results.parquet``), as the DAG's
``finalize`` does.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import time
import uuid
from collections import Counter, deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx

from leapi.constants import API_KEY_HEADER, IDEMPOTENCY_KEY_HEADER

_RETRYABLE = frozenset({429, 500, 502, 503, 504})


@dataclass(frozen=True)
class FairSettings:
    urls_per_pipeline: int = 10
    submit_concurrency: int = 4
    poll_interval_s: float = 1.0
    transfer_concurrency: int = 32
    upload_threads: int = 16


@dataclass
class FairOutcome:
    seconds: float = 0.0
    rows: int = 0
    done: int = 0
    objects: int = 0
    table_bytes: int = 0
    #: API requests the script made, by kind (its own count; the access log says the same).
    requests: Counter[str] = field(default_factory=Counter)
    last_upload_at: float = 0.0  # Unix seconds


@dataclass
class _Run:
    api: httpx.AsyncClient
    s3: Any
    bucket: str
    prefix: str
    operation: dict[str, Any]
    settings: FairSettings
    outcome: FairOutcome
    uploads: ThreadPoolExecutor
    rows: list[dict[str, Any]] = field(default_factory=list)
    waiting: deque[tuple[int, list[dict[str, Any]], float]] = field(default_factory=deque)
    submitting_done: asyncio.Event = field(default_factory=asyncio.Event)
    transfers: asyncio.Queue[tuple[dict[str, Any], dict[str, Any], int] | None] = field(
        default_factory=asyncio.Queue
    )


async def _request(run: _Run, method: str, url: str, kind: str, **kwargs: Any) -> httpx.Response:
    """One request, retried on 429/5xx (after ``Retry-After`` or a backoff) and on a dropped connection (a
    keep-alive connection the server closed as it was reused; POSTs carry an ``Idempotency-Key``, so a
    retried submit is not charged twice)."""
    for attempt in range(8):
        delay = min(2.0**attempt * 0.25, 10.0)
        run.outcome.requests[kind] += 1
        try:
            response = await run.api.request(method, url, **kwargs)
        except httpx.TransportError:
            if attempt == 7:
                raise
            await asyncio.sleep(delay)
            continue
        if response.status_code not in _RETRYABLE or attempt == 7:
            response.raise_for_status()
            return response
        await asyncio.sleep(float(response.headers.get("Retry-After") or delay))
    raise AssertionError("unreachable")


async def _submit(run: _Run, chunks: deque[list[dict[str, Any]]]) -> None:
    while chunks:
        chunk = chunks.popleft()
        body = {"source": {"http": {"url": [r["source_url"] for r in chunk]}}, "operations": [run.operation]}
        key = {IDEMPOTENCY_KEY_HEADER: uuid.uuid4().hex}
        response = await _request(run, "POST", "/v1/pipeline", "POST /v1/pipeline", json=body, headers=key)
        run.waiting.append((response.json()["pipeline"]["id"], chunk, time.time()))


async def _poll(run: _Run) -> None:
    while run.waiting or not run.submitting_done.is_set():
        while run.waiting:
            pipeline_id, chunk, submitted_at = run.waiting[0]
            response = await _request(run, "GET", f"/v1/pipeline/{pipeline_id}", "GET /v1/pipeline/{id}")
            pipeline = response.json()["pipeline"]
            if pipeline["status"] == "PROCESSING":
                break
            run.waiting.popleft()
            results = pipeline.get("results") or []
            for position, row in enumerate(chunk):
                result = results[position] if position < len(results) else {}
                row.update(pipeline_id=pipeline_id, submitted_at=submitted_at, status=pipeline["status"])
                await run.transfers.put((row, result, pipeline_id))
        await asyncio.sleep(run.settings.poll_interval_s)
    for _ in range(run.settings.transfer_concurrency):
        await run.transfers.put(None)


async def _transfer(run: _Run) -> None:
    loop = asyncio.get_running_loop()
    while (job := await run.transfers.get()) is not None:
        row, result, _pipeline_id = job
        output = result.get("output_object") or {}
        if not output.get("tmp_url"):
            run.rows.append(row | {"status": "error", "error": str(result.get("status") or "no output")})
            continue
        response = await _request(run, "GET", output["tmp_url"], "GET /v1/tmp/...")
        body = response.content
        sha256 = hashlib.sha256(body).hexdigest()
        key = f"{run.prefix}/feed/marketplace/{row['image_id']}/{sha256[:16]}.jpg"
        await loop.run_in_executor(
            run.uploads,
            lambda key=key, body=body: run.s3.put_object(
                Bucket=run.bucket, Key=key, Body=body, ContentType="image/jpeg"
            ),
        )
        run.outcome.last_upload_at = time.time()
        run.outcome.objects += 1
        run.rows.append(
            row
            | {
                "status": "done",
                "output_uri": f"s3://{run.bucket}/{key}",
                "output_bytes": len(body),
                "output_sha256": sha256,
                "output_width": output.get("width"),
                "output_height": output.get("height"),
                "finished_at": time.time(),
            }
        )


def _write_table(run: _Run) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    def stamp(value: float | None) -> datetime | None:
        return datetime.fromtimestamp(value, UTC) if value else None

    columns = (
        "image_id",
        "source_url",
        "pipeline_id",
        "status",
        "error",
        "output_uri",
        "output_bytes",
        "output_sha256",
        "output_width",
        "output_height",
    )
    table = pa.table(
        {name: [r.get(name) for r in run.rows] for name in columns}
        | {
            "submitted_at": pa.array(
                [stamp(r.get("submitted_at")) for r in run.rows], pa.timestamp("us", "UTC")
            ),
            "finished_at": pa.array(
                [stamp(r.get("finished_at")) for r in run.rows], pa.timestamp("us", "UTC")
            ),
        }
    )
    sink = io.BytesIO()
    pq.write_table(table.sort_by("image_id"), sink, compression="zstd")
    run.s3.put_object(Bucket=run.bucket, Key=f"{run.prefix}/results/results.parquet", Body=sink.getvalue())
    return sink.tell()


async def _fair(run: _Run, manifest: Sequence[dict[str, Any]]) -> None:
    size = run.settings.urls_per_pipeline
    chunks = deque([dict(r) for r in manifest[i : i + size]] for i in range(0, len(manifest), size))
    poller = asyncio.create_task(_poll(run))
    movers = [asyncio.create_task(_transfer(run)) for _ in range(run.settings.transfer_concurrency)]
    await asyncio.gather(*(_submit(run, chunks) for _ in range(run.settings.submit_concurrency)))
    run.submitting_done.set()
    await poller
    await asyncio.gather(*movers)


def fair_baseline(
    *,
    base_url: str,
    api_key: str,
    manifest: Sequence[dict[str, Any]],
    operation: dict[str, Any],
    s3_endpoint: str,
    bucket: str,
    prefix: str,
    settings: FairSettings = FairSettings(),
) -> FairOutcome:
    """Enhance ``manifest`` (rows with ``image_id`` and ``source_url``) into ``s3://bucket/prefix/...``.

    :returns: what it did and how long it took (the table write included).
    """
    import boto3
    import botocore.config

    outcome = FairOutcome()
    s3 = boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=botocore.config.Config(max_pool_connections=settings.upload_threads),
    )

    async def main() -> None:
        limits = httpx.Limits(max_connections=settings.transfer_concurrency + settings.submit_concurrency + 1)
        async with httpx.AsyncClient(
            base_url=base_url, headers={API_KEY_HEADER: api_key}, timeout=120, limits=limits
        ) as api:
            with ThreadPoolExecutor(settings.upload_threads, thread_name_prefix="upload") as uploads:
                run = _Run(api, s3, bucket, prefix, operation, settings, outcome, uploads)
                await _fair(run, manifest)
                outcome.table_bytes = await asyncio.get_running_loop().run_in_executor(
                    uploads, _write_table, run
                )
                outcome.rows = len(run.rows)
                outcome.done = sum(r["status"] == "done" for r in run.rows)

    started = time.monotonic()
    asyncio.run(main())
    outcome.seconds = time.monotonic() - started
    return outcome
