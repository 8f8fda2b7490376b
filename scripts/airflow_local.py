"""``make airflow``: a real Airflow with its UI, running this project's DAGs on this machine, until Ctrl-C.

Everything listens on 127.0.0.1 (free ports) and nothing reaches the internet:

* the sample photographs (``.work/airflow/sources``) served over HTTP, ``leapi-server`` and moto's S3
  server; the bucket ``leapi-local`` gets the sample manifest (24 photographs, one bad row, one dead link)
  as ``manifests/feed.parquet``, ``catalog.parquet`` and ``example.parquet``;
* :class:`devkit.airflow_stack.AirflowStack` (api-server with the UI, scheduler, dag-processor, triggerer; or
  ``--executor celery``: CeleryExecutor, Redis and two workers) on ``dags/`` and ``example_dags/``, every
  DAG unpaused. The production DAGs' default locations point at the bucket (``LEAPI_FEED_*``,
  ``LEAPI_CATALOG_*``, ``LEAPI_EXAMPLE_*``: the single-image examples' source is a photograph of the
  source server), so ``catalog_reenhancement`` (``@daily``) runs once at
  start and ``marketplace_feed_etl`` runs with its defaults.

The connections ``leapi_default`` and ``aws_default`` are real connections in the metadata DB (Admin >
Connections in the UI; edits there take effect), written with ``airflow connections import`` before
any component starts, so that the first scheduled run finds them; the pool ``leapi`` has 4 slots.
Airflow's state (metadata DB, logs, login) stays in ``.work/airflow/`` between sessions (``--reset``
forgets it); the S3 bucket lives only as long as the session (moto keeps it in memory).

Ctrl-C or SIGTERM stops every process by PID, then checks by ancestry and session id that none is left
(:class:`devkit.processes.ProcessTracker`: Airflow renames its processes, so neither names nor
environment markers find them all) and kills any that is.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: make the repository's packages importable
    sys.path.insert(0, str(REPO))

from devkit.airflow_stack import AirflowStack, AirflowStackError
from devkit.catalog import put_manifest, sample_catalog
from devkit.processes import ProcessTracker

STATE = REPO / ".work" / "airflow"  # git-ignored
BUCKET = "leapi-local"
API_KEY = "local-key"
IMAGES = 24
DAG_FOLDERS = (REPO / "dags", REPO / "example_dags")


def dag_environment(*, source_url: str) -> dict[str, str]:
    """Where the DAGs' default params point (read by the DAG files at parse time): the session's bucket,
    and a photograph of the session's source server (nothing reaches the internet)."""
    base = f"s3://{BUCKET}"
    return {
        "LEAPI_EXAMPLE_SOURCE_URL": source_url,
        "LEAPI_EXAMPLE_BUCKET": BUCKET,
        "LEAPI_EXAMPLE_MANIFEST": f"{base}/manifests/example.parquet",
        "LEAPI_EXAMPLE_IMAGES": f"{base}/example/images",
        "LEAPI_FEED_MANIFEST": f"{base}/manifests/feed.parquet",
        "LEAPI_FEED_RESULTS": f"{base}/feed/results",
        "LEAPI_FEED_IMAGES": f"{base}/feed/images",
        "LEAPI_FEED_EXPORT": f"{base}/feed/export",
        "LEAPI_CATALOG_MANIFEST": f"{base}/manifests/catalog.parquet",
        "LEAPI_CATALOG_RESULTS": f"{base}/catalog/results",
        "LEAPI_CATALOG_IMAGES": f"{base}/catalog/images",
        "LEAPI_EXAMPLE_RESULTS": f"{base}/example/results",
        # boto3 and s3fs read these too: no real AWS credentials can be picked up.
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }


def connections(*, leapi_url: str, s3_endpoint: str) -> dict[str, Any]:
    """``airflow connections import`` JSON: the session's ``leapi-server`` and moto S3."""
    extra = {"endpoint_url": s3_endpoint, "region_name": "us-east-1"}
    return {
        "leapi_default": {"conn_type": "leapi", "host": leapi_url, "password": API_KEY},
        "aws_default": {
            "conn_type": "aws",
            "login": "testing",
            "password": "testing",
            "extra": json.dumps(extra),
        },
    }


def dag_ids() -> list[str]:
    """The DAG ids in the DAG folders (read from the files: what the dag-processor will serialize). A DAG
    defined under an ``if`` is opt-in (``marketplace_feed_arrivals`` needs ``LEAPI_FEED_SQS_QUEUE``) and
    not counted: this session does not set what it needs."""
    found = []
    for folder in DAG_FOLDERS:
        for path in sorted(folder.glob("*.py")):
            for statement in ast.parse(path.read_text()).body:
                if isinstance(statement, ast.If):
                    continue
                found += [
                    node.value.value
                    for node in ast.walk(statement)
                    if isinstance(node, ast.keyword) and node.arg == "dag_id"
                    if isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)
                ]
    return found


def start_servers(servers: contextlib.ExitStack) -> dict[str, Any]:
    """Sources, leapi-server and moto (stopped by ``servers``); the manifests and buckets in place."""
    from devkit.s3 import MotoS3Server
    from devkit.server import running_server
    from devkit.sources import serve_directory

    sources = servers.enter_context(serve_directory(STATE / "sources"))
    server = servers.enter_context(
        running_server(
            data_dir=STATE / "leapi-server",
            api_keys=(API_KEY,),
            extra_args=("--workers", "2", "--rate-limit-per-minute", "0", "--monthly-quota", "0"),
            allow_private_sources=True,
        )
    )
    moto = MotoS3Server(STATE / "moto.log")
    moto.start()
    servers.callback(moto.stop)
    s3 = moto.client()
    table = sample_catalog(STATE / "sources", sources, IMAGES)
    for key in ("manifests/feed.parquet", "manifests/catalog.parquet", "manifests/example.parquet"):
        put_manifest(s3, table, bucket=BUCKET, key=key)
    return {"sources": sources, "server": server, "moto": moto, "rows": table.num_rows}


def prepare(stack: AirflowStack, started: dict[str, Any]) -> None:
    """Connections and pool in the metadata DB before any component runs (a scheduled run needs them)."""
    stack.migrate()
    path = stack.home / "connections.json"
    conns = connections(leapi_url=started["server"].base_url, s3_endpoint=started["moto"].endpoint_url)
    path.write_text(json.dumps(conns, indent=2))
    path.chmod(0o600)
    stack.cli(["connections", "import", "--overwrite", str(path)])
    stack.cli(["pools", "set", "leapi", "4", "LEAPI submissions"])


def sample_source_url(started: dict[str, Any]) -> str:
    """One photograph on the session's source server (the single-image examples' default)."""
    return f"{started['sources']}/{min(p.name for p in (STATE / 'sources').glob('sku-*.jpg'))}"


def banner(stack: AirflowStack, started: dict[str, Any], ids: list[str]) -> str:
    url, sources = stack.api_url, started["sources"]
    confs = {
        "marketplace_feed_etl": {},
        "catalog_reenhancement": {},
        "example_leapi_manifest_fanout": {},
        "example_leapi_submit": {},
        "example_leapi_sensor": {},
        "example_leapi_download": {"destination": f"file://{STATE}/downloads/"},
        "example_leapi_to_s3": {},
    }
    login = json.dumps({"username": "admin", "password": stack.admin_password})
    lines = [
        "",
        f"Airflow ({stack.executor}) is up:  {url}   login: admin / {stack.admin_password}",
        (
            f"  leapi-server {started['server'].base_url} (API key {API_KEY}) | S3 (moto) "
            f"{started['moto'].endpoint_url}, bucket {BUCKET} | sources {sources}"
        ),
        (
            f"  manifest: s3://{BUCKET}/manifests/feed.parquet and catalog.parquet ({started['rows']} rows: "
            f"{IMAGES} photographs, 1 bad row, 1 dead link)"
        ),
        "  connections leapi_default, aws_default: in the metadata DB (Admin > Connections); pool leapi: 4 slots",
        f"  logs: {stack.logs_dir}",
        "",
        f"DAGs (all unpaused): {', '.join(ids)}",
        "  catalog_reenhancement is @daily: its run for the last interval starts by itself.",
        "",
        "Trigger in the UI: Dags > <dag> > Trigger (every DAG's defaults point at this session's bucket and",
        "source server; example_leapi_download also wants a destination, below).",
        "Trigger through the REST API:",
        f"  TOKEN=$(curl -s -X POST {url}/auth/token -H 'Content-Type: application/json' -d '{login}' \\",
        "          | python3 -c 'import json,sys; print(json.load(sys.stdin)[\"access_token\"])')",
        f'  curl -s -X POST {url}/api/v2/dags/marketplace_feed_etl/dagRuns -H "Authorization: Bearer $TOKEN" \\',
        "       -H 'Content-Type: application/json' \\",
        '       -d "{\\"logical_date\\": \\"$(date -u +%FT%TZ)\\", \\"conf\\": {}}"',
        f'  curl -s {url}/api/v2/dags/marketplace_feed_etl/dagRuns -H "Authorization: Bearer $TOKEN"   # states',
        'Confs per DAG (the "conf" of the POST, or the UI\'s JSON):',
        *(f"  {dag_id}: {json.dumps(conf)}" for dag_id, conf in confs.items() if dag_id in ids),
        "",
        "Ctrl-C stops everything.",
    ]
    return "\n".join(lines)


def serve(args: argparse.Namespace, tracker: ProcessTracker) -> int:
    if args.reset:
        shutil.rmtree(STATE, ignore_errors=True)
    (STATE / "sources").mkdir(parents=True, exist_ok=True)
    executor = {"local": "LocalExecutor", "celery": "CeleryExecutor"}[args.executor]
    ids = dag_ids()
    with contextlib.ExitStack() as servers:
        try:
            print("starting sources, leapi-server and moto S3 ...", flush=True)
            started = start_servers(servers)
            stack = AirflowStack(
                home=STATE / "home",
                dags_folders=list(DAG_FOLDERS),
                executor=executor,
                env=dag_environment(source_url=sample_source_url(started)),
                expose_ui=True,
            )
            servers.callback(_stop_stack, stack)
            print(f"preparing the metadata DB in {stack.home.relative_to(REPO)} ...", flush=True)
            prepare(stack, started)
            print(f"starting Airflow ({executor}) ...", flush=True)
            stack.start()
            for dag_id in ids:
                stack.wait_for_dag(dag_id)
                stack.unpause(dag_id)
            print(banner(stack, started, ids), flush=True)
            while True:
                time.sleep(1)
                tracker.watch()
                stack.check_alive()
        finally:
            tracker.watch()  # what runs at the moment of the stop, before anything is stopped
            # A second Ctrl-C while stopping would leave processes behind; the stop is bounded (seconds).
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _stop_stack(stack: AirflowStack) -> None:
    print("stopping Airflow ...", flush=True)
    left = stack.stop(raise_on_leftovers=False)
    print(f"processes left: {left}" if left else "every Airflow process stopped", flush=True)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="make airflow", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--executor", choices=("local", "celery"), default=os.environ.get("EXECUTOR", "local")
    )
    parser.add_argument("--reset", action="store_true", help="forget the Airflow state of earlier sessions")
    args = parser.parse_args(argv)
    # SIGTERM unwinds like Ctrl-C; SIGINT is set too, as a shell ignores it in background jobs it starts.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    tracker = ProcessTracker()
    try:
        return serve(args, tracker)
    except KeyboardInterrupt:
        return 0
    except AirflowStackError as exc:
        print(f"\nAirflow failed: {exc}", file=sys.stderr)
        return 1
    finally:
        stragglers = [process.pid for process in tracker.leftovers()]
        left = tracker.kill_leftovers()
        if left:
            print(f"stopped; processes left even after SIGKILL: {left}", flush=True)
        elif stragglers:
            print(f"stopped; {len(stragglers)} straggler(s) killed (pids {stragglers}); no process left.")
        else:
            print("stopped; no process left.", flush=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
