"""DAG runs (``dag.test()``) through API faults, and the API key kept out of task logs (issue 6).

The DAG submits one image (deferrable: the trigger polls), then downloads the result. In front of a real
``leapi-server``, respx plays the part of an overloaded API for a while: REJECTED rate-limit answers (as
HTTP 429 and as HTTP 200, the real API's documented body) and 503s on both the submit and the polls; then
it lets every request through to the server.
"""

from __future__ import annotations

import re
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import respx
from PIL import Image

from devkit.airflow_dags import load_dag, task_states, xcom_value
from devkit.server import RunningServer, running_server
from leapi.constants import RATE_LIMIT_REASON

pytestmark = pytest.mark.slow

#: Distinctive keys: any occurrence in a log is a leak (the wrong one matters too: it may be another account's).
API_KEY = "sk-live-4f1c9e2b7a-DO-NOT-LOG"
WRONG_KEY = "sk-live-0a9b8c7d6e-ALSO-SECRET"

DAG_TEMPLATE = '''
"""Test DAG: submit one image (deferrable), then download its result."""
from datetime import datetime

from airflow.sdk import DAG

from leapi_provider.operators.leapi import LeapiDownloadResultOperator, LeapiSubmitPipelineOperator

with DAG(
    dag_id="{dag_id}",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    params={{"url": "", "destination": ""}},
) as dag:
    enhance = LeapiSubmitPipelineOperator(
        task_id="enhance",
        source_urls="{{{{ params.url }}}}",
        operations=[{{"op": "preset/marketplace", "width": 120}}],
        deferrable=True,
        poll_interval=1,
        leapi_conn_id="{conn_id}",
    )
    download = LeapiDownloadResultOperator(
        task_id="download",
        pipeline_id="{{{{ ti.xcom_pull(task_ids='enhance', key='pipeline_id') }}}}",
        destination="{{{{ params.destination }}}}",
        leapi_conn_id="{conn_id}",
    )
    enhance >> download
'''


@pytest.fixture(scope="module")
def secret_key_server() -> Iterator[RunningServer]:
    with running_server(
        api_keys=(API_KEY,), extra_args=("--workers", "1", "--rate-limit-per-minute", "0")
    ) as server:
        yield server


def write_dag(folder: Path, dag_id: str, conn_id: str):
    path = folder / f"{dag_id}.py"
    path.write_text(textwrap.dedent(DAG_TEMPLATE).format(dag_id=dag_id, conn_id=conn_id))
    return load_dag(path, dag_id)


def used(server: RunningServer) -> int:
    with server.client() as client:
        return client.get("/v1/me/usage/").json()["used"]


def everything_logged(caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]) -> str:
    """Every log line the runs produced: records, stdout/stderr, and task log files under AIRFLOW_HOME."""
    import os

    captured = capfd.readouterr()
    files = [p for p in Path(os.environ["AIRFLOW_HOME"]).rglob("*.log") if p.is_file()]
    return "\n".join(
        [caplog.text, captured.out, captured.err, *(p.read_text(errors="replace") for p in files)]
    )


def test_rate_limit_bursts_and_503s_the_dag_completes_with_backoff_and_no_credit_wasted(
    airflow_db, secret_key_server, leapi_conn_factory, source_photos, test_dags_dir, tmp_path, caplog, capfd
) -> None:
    conn_id = leapi_conn_factory("leapi_overloaded", secret_key_server.base_url, API_KEY)
    dag = write_dag(test_dags_dir, "test_leapi_overloaded_api", conn_id)
    before = used(secret_key_server)
    posts_before = secret_key_server.logs().count('"POST /v1/pipeline HTTP/1.1" 200')
    rejected = httpx.Response(
        429, json={"status": "REJECTED", "reason": RATE_LIMIT_REASON}, headers={"Retry-After": "1"}
    )
    rejected_as_200 = httpx.Response(200, json={"status": "REJECTED", "reason": RATE_LIMIT_REASON})
    unavailable = httpx.Response(503, text="upstream overloaded", headers={"Retry-After": "0"})
    submit_script = [rejected, rejected_as_200, rejected, unavailable, unavailable]
    poll_script = [unavailable, unavailable, unavailable]
    base = secret_key_server.base_url

    def scripted(script: list[httpx.Response]):
        def answer(request: httpx.Request) -> httpx.Response | httpx.Request:
            return script.pop(0) if script else request  # then through to the real server

        return answer

    started = time.monotonic()
    with respx.mock(assert_all_called=False) as api:
        submits = api.post(f"{base}/v1/pipeline").mock(side_effect=scripted(submit_script))
        polls = api.get(url__regex=rf"^{re.escape(base)}/v1/pipeline/\d+$").mock(
            side_effect=scripted(poll_script)
        )
        api.route().pass_through()
        dag_run = dag.test(run_conf={"url": source_photos["cat.jpg"], "destination": f"file://{tmp_path}/"})
    elapsed = time.monotonic() - started
    logs = everything_logged(caplog, capfd)

    assert dag_run.state == "success", task_states(dag_run)
    assert submit_script == [] and poll_script == [], "every scripted fault was served"
    # Five scripted refusals, then one submit through to the server (respx records a passed-through call
    # twice, so the server's access log counts the real ones).
    assert submits.call_count >= 6 and polls.call_count >= 3
    assert secret_key_server.logs().count('"POST /v1/pipeline HTTP/1.1" 200') == posts_before + 1
    assert elapsed >= 2, "the two Retry-After: 1 answers were honoured"
    # The REJECTED-as-200 answer has no hint: the account's limiter books the retry a minute window after
    # the last submits (the real API's documented answer; a quick retry would count against the limit).
    assert elapsed >= 60, elapsed
    pipeline_id = xcom_value(dag_run, "enhance", key="pipeline_id")
    assert xcom_value(dag_run, "enhance")["status"] == "DONE"
    (uri,) = xcom_value(dag_run, "download")
    with Image.open(uri.removeprefix("file://")) as image:
        assert image.width == 120
    # Backoff is visible: one warning per refused submit, and the polls' 503s.
    assert (
        len(re.findall(r"LEAPI POST /v1/pipeline: rate limited \((REJECTED|HTTP 429)\); backoff", logs)) == 3
    )
    assert len(re.findall(r"LEAPI POST /v1/pipeline: HTTP 503; backoff", logs)) == 2
    assert re.search(rf"LEAPI GET /v1/pipeline/{pipeline_id}: HTTP 503; backoff", logs)
    # No credit wasted: five refused submits and one accepted one cost exactly one credit.
    assert used(secret_key_server) == before + 1
    assert (
        f"pipeline {pipeline_id}" in logs or f"pipeline_id={pipeline_id}" in logs or str(pipeline_id) in logs
    )
    assert API_KEY not in logs


def test_the_api_key_never_appears_in_task_logs(
    airflow_db, secret_key_server, leapi_conn_factory, source_photos, test_dags_dir, tmp_path, caplog, capfd
) -> None:
    """A successful run with the right key and a failing run with a wrong one, logged at DEBUG: neither key
    is anywhere in what Airflow and the libraries logged."""
    import logging

    caplog.set_level(logging.DEBUG)
    good = write_dag(
        test_dags_dir,
        "test_leapi_key_good",
        leapi_conn_factory("leapi_key_good", secret_key_server.base_url, API_KEY),
    )
    bad = write_dag(
        test_dags_dir,
        "test_leapi_key_bad",
        leapi_conn_factory("leapi_key_bad", secret_key_server.base_url, WRONG_KEY),
    )
    ok_run = good.test(run_conf={"url": source_photos["burger.jpg"], "destination": f"file://{tmp_path}/"})
    failed_run = bad.test(run_conf={"url": source_photos["burger.jpg"], "destination": f"file://{tmp_path}/"})
    logs = everything_logged(caplog, capfd)

    assert ok_run.state == "success", task_states(ok_run)
    assert failed_run.state == "failed"
    assert "401" in logs and "check the API key" in logs, "the failing run's error was logged"
    pipeline_id = xcom_value(ok_run, "enhance", key="pipeline_id")
    assert f"LEAPI accepted pipeline {pipeline_id}" in logs, "the task logs were captured"
    assert API_KEY not in logs
    assert WRONG_KEY not in logs
    with secret_key_server.client() as client:
        assert client.get("/healthz").status_code == 200
    assert API_KEY not in secret_key_server.logs() and WRONG_KEY not in secret_key_server.logs()
