"""``make demo``: the catalog job end to end on this machine: ``marketplace_feed_etl`` over 24 photographs.

What it does, with nothing from the internet:

1. Writes 24 real photographs (scikit-image's samples, at several sizes and JPEG qualities) into
   ``.work/demo/sources/`` and serves them over HTTP on 127.0.0.1 (the same port every run, so that the
   manifest's URLs stay the same), plus a manifest with one bad row and one dead link.
2. Starts ``leapi-server`` (data in ``.work/demo/leapi-server``) and moto's S3 server on free loopback
   ports; the demo bucket is restored from ``.work/demo/s3/`` (moto keeps nothing between runs).
3. Runs ``dags/marketplace_feed_etl.py`` with ``dag.test()`` on a SQLite Airflow home in
   ``.work/demo/airflow``.
4. Prints the summary (rows per status and preset, credits used, wall time) and the paths of the result
   table, the contact sheet and the feed export (local copies in ``.work/demo/``); saves the bucket; stops
   every process it started.

Run it twice: the second run finds every photograph unchanged and skips it (``skipped_unchanged``, no
credit spent). ``--reset`` starts from scratch; ``--touch N`` changes N source photographs first, to see
them re-enhanced.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import signal
import sys
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / ".work" / "demo"  # git-ignored
AIRFLOW_HOME = DEMO / "airflow"
BUCKET = "leapi-demo"
API_KEY = "demo-key"
DAG_FILE = REPO / "dags" / "marketplace_feed_etl.py"
IMAGE_COUNT = 24

# Airflow reads its configuration when first imported: everything is set before any import of it.
os.environ.update(
    {
        "AIRFLOW_HOME": str(AIRFLOW_HOME),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{AIRFLOW_HOME / 'airflow.db'}",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": os.environ.get("DEMO_LOG_LEVEL", "ERROR"),
        "AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST": json.dumps(
            [
                {
                    "name": "leapi-dags",
                    "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle",
                    "kwargs": {"path": str(REPO / "dags")},
                }
            ]
        ),
    }
)


@contextlib.contextmanager
def serve_sources(folder: Path, state_file: Path) -> Iterator[str]:
    """Serve ``folder`` on 127.0.0.1, on the port of the previous run when it is free (stable URLs)."""
    from tests.support.server import serve_directory

    state = json.loads(state_file.read_text()) if state_file.exists() else {}
    with contextlib.ExitStack() as stack:
        try:
            base_url = stack.enter_context(serve_directory(folder, port=state.get("source_port") or 0))
        except OSError:
            print(
                f"(port {state['source_port']} of the previous run is busy: the sources get new URLs, "
                "so no skip this time)"
            )
            base_url = stack.enter_context(serve_directory(folder))
        state_file.write_text(json.dumps({**state, "source_port": urlsplit(base_url).port}))
        yield base_url


def restore_bucket(client, snapshot: Path) -> int:
    client.create_bucket(Bucket=BUCKET)
    count = 0
    for path in sorted(p for p in snapshot.rglob("*") if p.is_file()):
        client.upload_file(str(path), BUCKET, path.relative_to(snapshot).as_posix())
        count += 1
    return count


def save_bucket(client, snapshot: Path) -> int:
    fresh = snapshot.with_name(snapshot.name + ".new")
    shutil.rmtree(fresh, ignore_errors=True)
    count = 0
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
        for item in page.get("Contents", []):
            target = fresh / item["Key"]
            target.parent.mkdir(parents=True, exist_ok=True)
            client.download_file(BUCKET, item["Key"], str(target))
            count += 1
    shutil.rmtree(snapshot, ignore_errors=True)
    fresh.rename(snapshot)
    return count


def demo_manifest(base_url: str, sources: Path, *, touch: int) -> tuple[object, int]:
    """The 24 photographs (written once: they stay unchanged between runs) and their manifest."""
    import pyarrow as pa
    from PIL import Image

    from tests.support.catalog import sample_manifest, write_sample_images

    images = write_sample_images(
        sources, IMAGE_COUNT, long_sides=(480, 320), qualities=(90, 60, 30), prefix="sku", overwrite=False
    )
    for image in images[:touch]:
        path = sources / image.file_name
        with Image.open(path) as picture:
            picture.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(path, quality=image.quality)
        later = time.time() + 2  # a Last-Modified the previous run has not seen (1 s resolution)
        os.utime(path, (later, later))
    table = sample_manifest(images, base_url)
    rows = table.to_pylist()
    rows.append({**rows[0], "image_id": "sku-bad-preset", "preset": "instagram"})
    rows.append({**rows[1], "image_id": "sku-dead-link", "source_url": f"{base_url}/discontinued.jpg"})
    return pa.Table.from_pylist(rows, schema=table.schema), len(images)


def upload_manifest(s3, base_url: str, *, touch: int) -> None:
    """The demo manifest, as Parquet, to ``s3://BUCKET/manifests/feed.parquet``."""
    import pyarrow.parquet as pq

    table, photos = demo_manifest(base_url, DEMO / "sources", touch=touch)
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    s3.put_object(Bucket=BUCKET, Key="manifests/feed.parquet", Body=buffer.getvalue())
    print(f"manifest: {table.num_rows} rows ({photos} photographs, 1 bad row, 1 dead link) -> "
          f"s3://{BUCKET}/manifests/feed.parquet")  # fmt: skip


def print_summary(results, *, credits_used: int, usage: dict, wall_s: float) -> None:
    presets = ["marketplace", "realestate", "print", None]
    counts = Counter(zip(results["status"].to_pylist(), results["preset"].to_pylist(), strict=True))
    statuses = [s for s in ("done", "skipped_unchanged", "error", "rejected_row", "deferred_quota")]
    header = f"{'status':<18}" + "".join(f"{p or '(none)':>13}" for p in presets) + f"{'total':>8}"
    print(header)
    print("-" * len(header))
    for status in statuses:
        row = [counts.get((status, p), 0) for p in presets]
        if sum(row):
            print(f"{status:<18}" + "".join(f"{n:>13}" for n in row) + f"{sum(row):>8}")
    print("-" * len(header))
    print(f"{'total':<18}" + "".join(f"{sum(counts.get((s, p), 0) for s in statuses):>13}" for p in presets)
          + f"{results.num_rows:>8}")  # fmt: skip
    print(
        f"\ncredits used by this run: {credits_used}   "
        f"(account: {usage.get('used')} used of {usage.get('quota')}, {usage.get('remaining')} left)"
    )
    print(f"wall time: {wall_s:.1f} s")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reset", action="store_true", help="forget earlier runs (start from scratch)")
    parser.add_argument("--touch", type=int, default=0, help="change N source photographs before running")
    args = parser.parse_args(argv)
    started = time.monotonic()
    if args.reset:
        shutil.rmtree(DEMO, ignore_errors=True)
    for folder in (DEMO, AIRFLOW_HOME, DEMO / "sources", DEMO / "s3"):
        folder.mkdir(parents=True, exist_ok=True)
    # SIGTERM (e.g. a CI timeout) unwinds like Ctrl-C, so that every server below is stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    import httpx
    from airflow.models.pool import Pool
    from airflow.utils import db

    from leapi.constants import API_KEY_HEADER, USAGE_PATH
    from leapi_provider.catalog import LEAPI_POOL
    from tests.fixtures.airflow import leapi_connection_json, load_dag
    from tests.fixtures.s3 import MotoS3Server, aws_connection_json
    from tests.support.server import running_server

    print(
        f"Airflow home {AIRFLOW_HOME.relative_to(REPO)} (SQLite); preparing the metadata DB ...", flush=True
    )
    db.initdb()
    Pool.create_or_update_pool(LEAPI_POOL, slots=4, description="LEAPI submissions", include_deferred=False)

    moto = MotoS3Server(DEMO / "moto.log")
    with contextlib.ExitStack() as stack:
        base_url = stack.enter_context(serve_sources(DEMO / "sources", DEMO / "state.json"))
        server = stack.enter_context(
            running_server(
                data_dir=DEMO / "leapi-server",
                api_keys=(API_KEY,),
                extra_args=("--workers", "2", "--rate-limit-per-minute", "0"),
            )
        )
        moto.start()
        stack.callback(moto.stop)
        s3 = moto.client()
        restored = restore_bucket(s3, DEMO / "s3")
        print(f"leapi-server {server.base_url} | moto S3 {moto.endpoint_url} (bucket {BUCKET}: {restored} "
              f"objects restored) | sources {base_url}")  # fmt: skip
        os.environ["AIRFLOW_CONN_LEAPI_DEFAULT"] = leapi_connection_json(server.base_url, API_KEY)
        os.environ["AIRFLOW_CONN_AWS_DEFAULT"] = aws_connection_json(moto.endpoint_url)
        for name, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing")):
            os.environ.setdefault(name, value)

        upload_manifest(s3, base_url, touch=args.touch)
        conf = {
            "manifest": f"s3://{BUCKET}/manifests/feed.parquet",
            "results": f"s3://{BUCKET}/results",
            "images": f"s3://{BUCKET}/cdn",
            "export": f"s3://{BUCKET}/export",
            "feed_url_template": "https://cdn.example.com/{key}",
            "urls_per_pipeline": 4,
            "max_batches": 4,
            "contact_sheet_images": 6,
        }
        with httpx.Client(base_url=server.base_url, headers={API_KEY_HEADER: API_KEY}) as client:
            used_before = client.get(USAGE_PATH).json()["used"]
            print("running marketplace_feed_etl with dag.test() ...", flush=True)
            dag = load_dag(DAG_FILE, "marketplace_feed_etl")
            dag_run = dag.test(run_conf=conf, logical_date=datetime.now(UTC))
            usage = client.get(USAGE_PATH).json()
        report_run(s3, dag_run, credits_used=usage["used"] - used_before, usage=usage, started=started)
    print(f"done in {time.monotonic() - started:.1f} s; all servers stopped")
    return 0 if dag_run.state == "success" else 1


def report_run(s3, dag_run, *, credits_used: int, usage: dict, started: float) -> None:
    """Print the run's summary and where its table, contact sheet and export are; save the bucket."""
    import pyarrow.compute as pc
    from airflow.sdk import ObjectStoragePath

    from leapi_provider import manifests

    results_root = ObjectStoragePath(f"s3://{BUCKET}/results", conn_id="aws_default")
    everything = manifests.read_result_tables(results_root)
    results = everything.filter(pc.equal(everything["dag_run_id"], dag_run.run_id))
    print(f"\nDAG run {dag_run.run_id}: {dag_run.state}\n")
    print_summary(results, credits_used=credits_used, usage=usage, wall_s=time.monotonic() - started)
    copies = {}
    for key, local in (
        (_latest_key(s3, "results/", ".png"), DEMO / "contact-sheet.png"),
        ("export/latest/feed.csv", DEMO / "feed.csv"),
    ):
        if key:
            s3.download_file(BUCKET, key, str(local))
            copies[key] = local
    run_date = results["run_date"][0].as_py() if results.num_rows else "?"
    print(f"\nresult table:  s3://{BUCKET}/results/ (partitions run_date={run_date}/preset=*/, "
          f"{len({r for r in results['run_key'].to_pylist()})} run)")  # fmt: skip
    for key, local in copies.items():
        print(f"{'contact sheet:' if key.endswith('.png') else 'feed export:  '} s3://{BUCKET}/{key}\n"
              f"               local copy: {local.relative_to(REPO)}")  # fmt: skip
    saved = save_bucket(s3, DEMO / "s3")
    print(f"\nbucket saved to {(DEMO / 's3').relative_to(REPO)} ({saved} objects); "
          "run `make demo` again to see the incremental skip")  # fmt: skip


def _latest_key(s3, prefix: str, suffix: str) -> str | None:
    """The newest object under ``prefix`` ending with ``suffix`` (the latest contact sheet)."""
    found = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        found += [o for o in page.get("Contents", []) if o["Key"].endswith(suffix)]
    return max(found, key=lambda o: o["LastModified"])["Key"] if found else None


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
