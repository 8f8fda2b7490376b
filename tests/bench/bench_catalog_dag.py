"""Benchmark: 1,000 images through the fan-out DAG against leapi-server, vs the server doing the same work.

Baseline (same run, same server, same images): a plain client posts the same pipelines (10 URLs each),
polls them until DONE and downloads every result: the server's own processing plus the least a client
can do. The DAG (``example_leapi_manifest_fanout`` with ``dag.test()``) does the same and also validates
and plans the manifest, records its submissions, verifies and uploads every result to S3 (moto) and writes
the result table. Ratio = DAG wall time / baseline wall time; HTTP requests to the LEAPI API per image are
counted from the server's access log. Everything runs in a child interpreter with its own Airflow home.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

IMAGES = 1000
URLS_PER_PIPELINE = 10
MAX_BATCHES = 8
REPO = Path(__file__).resolve().parents[2]
FANOUT = REPO / "example_dags" / "example_leapi_manifest_fanout.py"


def _access_counts(log_text: str) -> dict[str, int]:
    counts = {
        "POST /v1/pipeline": 0,
        "GET /v1/pipeline/{id}": 0,
        "GET /v1/me/usage/": 0,
        "GET /v1/tmp/...": 0,
    }
    for line in log_text.splitlines():
        if "uvicorn.access" not in line:
            continue
        if '"POST /v1/pipeline' in line:
            counts["POST /v1/pipeline"] += 1
        elif '"GET /v1/pipeline/' in line:
            counts["GET /v1/pipeline/{id}"] += 1
        elif '"GET /v1/me/usage' in line:
            counts["GET /v1/me/usage/"] += 1
        elif '"GET /v1/tmp/' in line:
            counts["GET /v1/tmp/..."] += 1
    return counts


def _busy_seconds(pipelines: list[dict]) -> float:
    """Length of the union of the pipelines' [started_at, finished_at] intervals (server busy time)."""
    from datetime import datetime

    spans = sorted(
        (datetime.fromisoformat(p["started_at"]), datetime.fromisoformat(p["finished_at"]))
        for p in pipelines
        if p.get("started_at") and p.get("finished_at")
    )
    total, current_start, current_end = 0.0, None, None
    for start, end in spans:
        if current_end is None or start > current_end:
            if current_end is not None:
                total += (current_end - current_start).total_seconds()
            current_start, current_end = start, end
        else:
            current_end = max(current_end, end)
    if current_end is not None:
        total += (current_end - current_start).total_seconds()
    return total


def _baseline(
    client, urls: list[str], operation: dict, *, in_order: bool = False
) -> tuple[float, list[dict]]:
    """Submit, wait for and download ``urls`` with a plain client; ``(seconds, pipelines)``.

    :param in_order: each polling round reads the pending pipelines in submission order and stops at the
        first one still PROCESSING (the server works through its queue in order). Without it every round
        reads every pending pipeline: fine for 100 pipelines, but at 10,000 the reads of one round take
        longer than the server needs to finish the next pipelines, and the client and the API process keep
        the 2 cores busy with status reads the engine needs (the scale bench uses ``in_order``).
    """
    started = time.monotonic()
    ids = []
    for i in range(0, len(urls), URLS_PER_PIPELINE):
        body = {"source": {"http": {"url": urls[i : i + URLS_PER_PIPELINE]}}, "operations": [operation]}
        ids.append(client.post("/v1/pipeline", json=body).json()["pipeline"]["id"])
    pending, finished = set(ids), {}
    while pending:
        for pipeline_id in sorted(pending):
            pipeline = client.get(f"/v1/pipeline/{pipeline_id}").json()["pipeline"]
            if pipeline["status"] != "PROCESSING":
                finished[pipeline_id] = pipeline
                pending.discard(pipeline_id)
            elif in_order:
                break
        time.sleep(0.5)
    for pipeline in finished.values():
        for result in pipeline["results"]:
            if result.get("output_object"):
                client.get(result["output_object"]["tmp_url"]).raise_for_status()
    return time.monotonic() - started, list(finished.values())


def child(work: Path) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from airflow.utils import db

    from devkit.airflow_dags import leapi_connection_json, load_dag
    from devkit.catalog import write_sample_images
    from devkit.s3 import MotoS3Server, aws_connection_json
    from devkit.server import running_server
    from devkit.sources import serve_directory

    db.initdb()
    images = write_sample_images(work / "sources", IMAGES, long_sides=(96, 80, 64), prefix="b")
    operation = {
        "op": "preset/marketplace",
        "width": 192,
        "height": 192,
        "image_format": "JPEG",
        "quality": 85,
    }
    moto = MotoS3Server(work / "moto.log")
    with (
        serve_directory(work / "sources") as base,
        running_server(
            data_dir=work / "leapi",
            extra_args=("--workers", "2", "--rate-limit-per-minute", "0", "--monthly-quota", "0"),
        ) as server,
    ):
        moto.start()
        try:
            s3 = moto.client()
            s3.create_bucket(Bucket="bench")
            urls = [f"{base}/{image.file_name}" for image in images]
            manifest = pa.table(
                {
                    "image_id": [image.image_id for image in images],
                    "source_url": urls,
                    "preset": ["marketplace"] * IMAGES,
                    "width": [192] * IMAGES,
                    "height": [192] * IMAGES,
                    "image_format": ["JPEG"] * IMAGES,
                    "quality": [85] * IMAGES,
                }
            )
            sink = pa.BufferOutputStream()
            pq.write_table(manifest, sink)
            s3.put_object(Bucket="bench", Key="manifest.parquet", Body=sink.getvalue().to_pybytes())
            with server.client(timeout=60) as client:
                _baseline(client, urls[:20], operation)  # warm-up: workers load the engine
                baseline_s, baseline_pipelines = _baseline(client, urls, operation)
            os.environ["AIRFLOW_CONN_LEAPI_DEFAULT"] = leapi_connection_json(server.base_url, server.api_key)
            os.environ["AIRFLOW_CONN_AWS_DEFAULT"] = aws_connection_json(moto.endpoint_url)
            conf = {
                "manifest": "s3://bench/manifest.parquet",
                "results": "s3://bench/results",
                "images": "s3://bench/images",
                "urls_per_pipeline": URLS_PER_PIPELINE,
                "max_batches": MAX_BATCHES,
                "contact_sheet_images": 0,
            }
            dag = load_dag(FANOUT, "example_leapi_manifest_fanout")
            log_offset = len(server.logs())
            started = time.monotonic()
            dag_run = dag.test(run_conf=conf)
            dag_s = time.monotonic() - started
            requests = _access_counts(server.logs()[log_offset:])
            from airflow.utils.session import create_session

            with create_session() as session:
                tis = dag_run.get_task_instances(session=session)
                phases: dict[str, float] = {}
                for ti in tis:
                    if ti.start_date and ti.end_date:
                        name = ti.task_id.split(".")[-1]
                        phases[name] = phases.get(name, 0.0) + (ti.end_date - ti.start_date).total_seconds()
            from airflow.sdk import ObjectStoragePath

            from leapi_provider.manifests import read_result_tables

            results = read_result_tables(ObjectStoragePath("s3://bench/results", conn_id="aws_default"))
            dag_pipeline_ids = sorted({p for p in results["pipeline_id"].to_pylist() if p is not None})
            with server.client(timeout=60) as client:
                dag_pipelines = [client.get(f"/v1/pipeline/{i}").json()["pipeline"] for i in dag_pipeline_ids]
            done = len(s3.list_objects_v2(Bucket="bench", Prefix="images/", MaxKeys=1000).get("Contents", []))
        finally:
            moto.stop()
    return {
        "state": str(dag_run.state),
        "dag_s": dag_s,
        "baseline_s": baseline_s,
        "baseline_busy_s": _busy_seconds(baseline_pipelines),
        "dag_busy_s": _busy_seconds(dag_pipelines),
        "requests": requests,
        "phases": phases,
        "objects": done,
        "pipelines": len(dag_pipeline_ids),
    }


def run() -> str:
    with tempfile.TemporaryDirectory(prefix="bench-catalog-dag-") as tmp:
        work = Path(tmp)
        home = work / "airflow"
        home.mkdir()
        env = {
            **os.environ,
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "ERROR",
            "AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST": json.dumps(
                [
                    {
                        "name": "leapi-examples",
                        "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle",
                        "kwargs": {"path": str(REPO / "example_dags")},
                    }
                ]
            ),
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
        done = subprocess.run(
            [sys.executable, "-m", "tests.bench.bench_catalog_dag", "--child", str(work)],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"benchmark child failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        facts = json.loads(done.stdout.strip().splitlines()[-1])
    requests = facts["requests"]
    total_requests = sum(requests.values())
    phases = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in sorted(facts["phases"].items()))
    overhead_s = facts["dag_s"] - facts["baseline_s"]
    lines = [
        f"## Fan-out DAG: {IMAGES:,} images against leapi-server",
        "",
        (
            f"`example_leapi_manifest_fanout` with `dag.test()` ({URLS_PER_PIPELINE} URLs per pipeline, "
            f"{MAX_BATCHES} batches), small JPEG photographs (64-96 px, enhanced to fit 192x192), leapi-server "
            "with 2 workers, moto's S3 server. Baseline in the same run: a plain client submitting the same "
            "pipelines, polling them and downloading every result."
        ),
        "",
        "| | wall time (s) | x baseline | server busy (s) |",
        "|---|---:|---:|---:|",
        f"| baseline client | {facts['baseline_s']:.1f} | 1.0 | {facts['baseline_busy_s']:.1f} |",
        (
            f"| fan-out DAG (run {facts['state']}) | {facts['dag_s']:.1f} | "
            f"{facts['dag_s'] / facts['baseline_s']:.2f} | {facts['dag_busy_s']:.1f} |"
        ),
        "",
        (
            f"- Orchestration overhead: {overhead_s:.1f} s over the baseline for {IMAGES:,} images "
            f"({overhead_s / IMAGES * 1000:.0f} ms per image); task time by kind: {phases}."
        ),
        (
            f"- LEAPI API requests per image: {total_requests / IMAGES:.2f} "
            f"({', '.join(f'{k}: {v}' for k, v in requests.items())}; {facts['pipelines']} pipelines), "
            f"{facts['objects']} objects written to S3."
        ),
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        print(json.dumps(child(Path(sys.argv[2]))))
    else:
        print(run())
