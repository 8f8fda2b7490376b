"""``make demo``: the catalog job end to end on this machine: ``marketplace_feed_etl`` over 30 photographs.

What it does, with nothing from the internet:

1. Writes 24 real photographs (scikit-image's samples, at several sizes and JPEG qualities) into
   ``.work/demo/sources/`` and serves them over HTTP on 127.0.0.1 (the same port every run, so that the
   manifest's URLs stay the same), plus 6 more into the demo bucket under ``private-sources/`` (moto
   refuses unsigned reads, and the source server does not serve them: the run presigns them), and a
   manifest with one bad row and one dead link.
2. Starts ``leapi-server`` (data in ``.work/demo/leapi-server``) and moto's S3 server on free loopback
   ports; the demo bucket is restored from ``.work/demo/s3/`` (moto keeps nothing between runs).
3. Runs ``dags/marketplace_feed_etl.py`` with ``dag.test()`` on a SQLite Airflow home in
   ``.work/demo/airflow``.
4. Prints the summary (rows per status and preset, credits used, wall time) and the paths of the result
   table, the contact sheet, the HTML report and the feed export (local copies in ``.work/demo/``); checks
   that no presigned URL reached the result table; saves the bucket; stops every process it started.

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
#: (git-ignored; LEAPI_DEMO_DIR moves it, e.g. for the demo's test)
DEMO = Path(os.environ.get("LEAPI_DEMO_DIR") or REPO / ".work" / "demo")
AIRFLOW_HOME = DEMO / "airflow"
BUCKET = "leapi-demo"
API_KEY = "demo-key"
DAG_FILE = REPO / "dags" / "marketplace_feed_etl.py"
IMAGE_COUNT = 24
#: Photographs that only exist in the (private) demo bucket, as s3:// sources.
PRIVATE_COUNT = 6
PRIVATE_PREFIX = "private-sources/"
#: What a presigned S3 URL carries (SigV4 and SigV2): it must never reach the demo's output or tables.
PRESIGNED_MARKERS = ("X-Amz-Signature", "X-Amz-Credential", "AWSAccessKeyId=", "Signature=")

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
    from devkit.sources import serve_directory

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


def upload_private_sources(s3, folder: Path) -> list:
    """The private photographs, in the bucket only (uploaded once: their ETags stay, so reruns skip them)."""
    from devkit.catalog import write_sample_images

    images = write_sample_images(folder, PRIVATE_COUNT, long_sides=(400,), prefix="vault", overwrite=False)
    present = {o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix=PRIVATE_PREFIX).get("Contents", [])}
    for image in images:
        if PRIVATE_PREFIX + image.file_name not in present:
            s3.upload_file(str(folder / image.file_name), BUCKET, PRIVATE_PREFIX + image.file_name)
    return images


def demo_manifest(base_url: str, sources: Path, *, touch: int, private: list) -> tuple[object, int]:
    """The 24 photographs (written once: they stay unchanged between runs), the private ones, and their
    manifest."""
    import pyarrow as pa
    from PIL import Image

    from devkit.catalog import sample_manifest, write_sample_images

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
    rows = (
        table.to_pylist()
        + sample_manifest(private, f"s3://{BUCKET}/{PRIVATE_PREFIX.rstrip('/')}").to_pylist()
    )
    rows.append({**rows[0], "image_id": "sku-bad-preset", "preset": "instagram"})
    rows.append({**rows[1], "image_id": "sku-dead-link", "source_url": f"{base_url}/discontinued.jpg"})
    return pa.Table.from_pylist(rows, schema=table.schema), len(images)


def upload_manifest(s3, base_url: str, *, touch: int) -> None:
    """The demo manifest, as Parquet, to ``s3://BUCKET/manifests/feed.parquet``."""
    import pyarrow.parquet as pq

    private = upload_private_sources(s3, DEMO / "private-sources")
    table, photos = demo_manifest(base_url, DEMO / "sources", touch=touch, private=private)
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    s3.put_object(Bucket=BUCKET, Key="manifests/feed.parquet", Body=buffer.getvalue())
    print(f"manifest: {table.num_rows} rows ({photos} served photographs, {len(private)} in the private "
          f"s3://{BUCKET}/{PRIVATE_PREFIX}, 1 bad row, 1 dead link) -> s3://{BUCKET}/manifests/feed.parquet")  # fmt: skip


def print_summary(results, *, credits_used: int, usage: dict, wall_s: float) -> None:
    presets = ["marketplace", "realestate", "print", None]
    counts = Counter(zip(results["status"].to_pylist(), results["preset"].to_pylist(), strict=True))
    statuses = ["done", "skipped_unchanged", "error", "rejected_row", "deferred_quota", "deferred_cap"]
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

    from devkit.airflow_dags import leapi_connection_json, load_dag
    from devkit.s3 import MotoS3Server, aws_connection_json
    from devkit.server import running_server
    from leapi.constants import API_KEY_HEADER, USAGE_PATH
    from leapi_provider.catalog import LEAPI_POOL

    print(f"Airflow home {_shown(AIRFLOW_HOME)} (SQLite); preparing the metadata DB ...", flush=True)
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
    """Print the run's summary and where its table, contact sheet, report and export are; save the bucket."""
    import pyarrow.compute as pc
    from airflow.sdk import ObjectStoragePath

    from devkit.airflow_dags import xcom_value
    from leapi_provider import manifests

    results_root = ObjectStoragePath(f"s3://{BUCKET}/results", conn_id="aws_default")
    everything = manifests.read_result_tables(results_root)
    results = everything.filter(pc.equal(everything["dag_run_id"], dag_run.run_id))
    print(f"\nDAG run {dag_run.run_id}: {dag_run.state}\n")
    print_summary(results, credits_used=credits_used, usage=usage, wall_s=time.monotonic() - started)
    private = [
        r for r in results.to_pylist() if r["source_url"].startswith(f"s3://{BUCKET}/{PRIVATE_PREFIX}")
    ]
    print(f"private s3:// sources: {len(private)} rows, "
          + ", ".join(f"{n} {s}" for s, n in sorted(Counter(r["status"] for r in private).items())))  # fmt: skip
    leaked = [
        name
        for name in everything.column_names
        if pa_is_string(everything.schema.field(name).type)
        and any(m in v for v in everything[name].to_pylist() if v for m in PRESIGNED_MARKERS)
    ]
    print(f"presigned URLs in the result table: {', '.join(leaked) if leaked else 'none'}")
    try:
        finalized = xcom_value(dag_run, "finalize") or {}
    except LookupError:
        finalized = {}
    run_date = results["run_date"][0].as_py() if results.num_rows else "?"
    runs = len(set(everything["run_key"].to_pylist()))
    print(f"\nresult table:  s3://{BUCKET}/results/ (partitions run_date={run_date}/preset=*/; "
          f"{_plural(runs, 'run')} in the table, this one included)")  # fmt: skip
    saved = save_bucket(s3, DEMO / "s3")
    sheet = finalized.get("contact_sheet")
    if sheet:
        shutil.copyfile(_local_copy(sheet), DEMO / "contact-sheet.png")
        print(f"contact sheet: {sheet}\n               local copy: {_shown(DEMO / 'contact-sheet.png')}")
    else:
        print("contact sheet: none new: this run enhanced no image, so no new contact sheet was written")
    if finalized.get("report"):
        print(f"HTML report:   {finalized['report']}\n               local copy: "
              f"{_shown(_local_copy(finalized['report']))} (open it in a browser; its links work there)")  # fmt: skip
    feed = DEMO / "s3" / "export" / "latest" / "feed.csv"
    if feed.exists():
        shutil.copyfile(feed, DEMO / "feed.csv")
        print(
            f"feed export:   s3://{BUCKET}/export/latest/feed.csv\n               local copy: {_shown(DEMO / 'feed.csv')}"
        )
    print(f"\nbucket saved to {_shown(DEMO / 's3')} ({saved} objects)")
    enhanced = results.filter(pc.equal(results["status"], "done")).num_rows
    if enhanced:
        print("run `make demo` again to see the incremental skip (every photograph unchanged, 0 credits)")
    else:
        print(
            "nothing changed, so nothing was paid for; to see changed sources re-enhanced: "
            "`.venv/bin/python scripts/demo_catalog.py --touch 2` (`--reset` starts from scratch)"
        )


def pa_is_string(data_type) -> bool:
    import pyarrow as pa

    return bool(pa.types.is_string(data_type) or pa.types.is_large_string(data_type))


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _local_copy(uri: str) -> Path:
    """Where the saved bucket holds ``s3://BUCKET/key``."""
    return DEMO / "s3" / uri.removeprefix(f"s3://{BUCKET}/")


def _shown(path: Path) -> str:
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
