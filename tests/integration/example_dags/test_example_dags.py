"""The example DAGs: each imports cleanly (DagBag) and runs end to end with ``dag.test()`` against
``leapi-server`` and moto's S3 server on loopback, deferrable paths included (``dag.test()`` runs the
triggers inline). Also the retry-safety proof: a task whose worker dies right after submitting does not
create a second pipeline when Airflow retries it.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from PIL import Image

from devkit.airflow_dags import load_dag, task_states, xcom_value
from tests.fixtures.airflow import REPO

EXAMPLES = REPO / "example_dags"
MY_EXAMPLES = {
    "example_leapi_submit": "example_leapi_submit.py",
    "example_leapi_sensor": "example_leapi_sensor.py",
    "example_leapi_download": "example_leapi_download.py",
    "example_leapi_to_s3": "example_leapi_to_s3.py",
}

pytestmark = pytest.mark.slow


def usage_used(server) -> int:
    with server.client() as client:
        return client.get("/v1/me/usage/").json()["used"]


def test_example_dags_import_cleanly():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(EXAMPLES))
    errors = {
        path: error for path, error in bag.import_errors.items() if Path(path).name in MY_EXAMPLES.values()
    }
    assert errors == {}
    for dag_id in MY_EXAMPLES:
        dag = bag.dags.get(dag_id)
        assert dag is not None and "leapi" in dag.tags


@pytest.fixture
def run_example(airflow_db, leapi_conn):
    def run(dag_id: str, **run_conf):
        dag = load_dag(EXAMPLES / MY_EXAMPLES[dag_id], dag_id)
        return dag.test(run_conf=run_conf)

    return run


def test_submit_example_defers_and_succeeds(run_example, source_photos, caplog):
    dag_run = run_example("example_leapi_submit", source_url=source_photos["burger.jpg"])
    assert dag_run.state == "success", task_states(dag_run)
    summary = xcom_value(dag_run, "enhance")
    assert summary["status"] == "DONE" and summary["succeeded"] == 1
    assert xcom_value(dag_run, "enhance", key="pipeline_id") == summary["pipeline_id"]
    assert xcom_value(dag_run, "report").startswith(f"pipeline {summary['pipeline_id']}: DONE")
    assert "running trigger in line" in caplog.text, "the deferrable path ran through the trigger"


def test_sensor_example(run_example, source_photos):
    dag_run = run_example("example_leapi_sensor", source_url=source_photos["rocket.jpg"])
    assert dag_run.state == "success", task_states(dag_run)
    pipeline_id = xcom_value(dag_run, "submit", key="pipeline_id")
    assert xcom_value(dag_run, "wait") == {
        "pipeline_ids": [pipeline_id],
        "counts": {"PROCESSING": 0, "DONE": 1, "ERROR": 0},
        "failed_ids": [],
    }


def test_download_example(run_example, source_photos, tmp_path):
    dag_run = run_example(
        "example_leapi_download", source_url=source_photos["cat.jpg"], destination=f"file://{tmp_path}/"
    )
    assert dag_run.state == "success", task_states(dag_run)
    pipeline_id = xcom_value(dag_run, "enhance", key="pipeline_id")
    (uri,) = xcom_value(dag_run, "download")
    assert uri == f"file://{tmp_path}/cat__print__{pipeline_id}.png"
    with Image.open(uri.removeprefix("file://")) as image:
        assert image.format == "PNG" and image.width <= 1600 and image.height <= 1065


def test_to_s3_example(run_example, source_photos, moto_s3, s3_bucket):
    dag_run = run_example(
        "example_leapi_to_s3",
        source_urls=[source_photos["burger.jpg"], source_photos["rocket.jpg"]],
        bucket=s3_bucket,
    )
    assert dag_run.state == "success", task_states(dag_run)
    uris = xcom_value(dag_run, "to_s3")
    listed = sorted(o["Key"] for o in moto_s3.client().list_objects_v2(Bucket=s3_bucket)["Contents"])
    assert sorted(uri.split("/", 3)[3] for uri in uris) == listed and len(listed) == 2
    tags = moto_s3.client().get_object_tagging(Bucket=s3_bucket, Key=listed[0])["TagSet"]
    assert {t["Key"]: t["Value"] for t in tags}["dag_run"] == dag_run.run_id


CRASHING_DAG = '''
"""Test DAG: the worker "dies" right after the submit on the first try (the API already accepted)."""
from datetime import datetime, timedelta

from airflow.sdk import DAG

from leapi_provider.operators.leapi import LeapiSubmitPipelineOperator


class CrashAfterSubmit(LeapiSubmitPipelineOperator):
    def submit_job(self, context):
        pipeline_id = super().submit_job(context)
        if "{crash_at}" == "submit_job" and context["ti"].try_number == 1:
            raise RuntimeError("simulated worker death: accepted, id not yet in the task state store")
        return pipeline_id

    def poll_until_complete(self, external_id, context):
        if "{crash_at}" == "poll_until_complete" and context["ti"].try_number == 1:
            raise RuntimeError("simulated worker death: id stored, before waiting")
        return super().poll_until_complete(external_id, context)


with DAG(dag_id="{dag_id}", schedule=None, start_date=datetime(2026, 1, 1), catchup=False) as dag:
    CrashAfterSubmit(
        task_id="enhance",
        source_urls="{{{{ params.url }}}}",
        operations=[{{"op": "preset/marketplace", "width": 200}}],
        deferrable={deferrable},
        poll_interval=1,
        retries=2,
        retry_delay=timedelta(seconds=0),
        params={{"url": ""}},
    )
'''


@pytest.mark.parametrize(
    ("crash_at", "deferrable"),
    [
        # Dies before the id reached the task state store: the Idempotency-Key finds the pipeline again.
        ("submit_job", False),
        # Dies after the id was stored, before waiting: the retry reconnects through the state store.
        ("poll_until_complete", True),
    ],
)
def test_worker_death_after_submit_creates_no_second_pipeline(
    airflow_db, leapi_conn, leapi_server, source_photos, test_dags_dir, crash_at, deferrable
):
    dag_id = f"test_crash_in_{crash_at}"
    path = test_dags_dir / f"{dag_id}.py"
    path.write_text(
        textwrap.dedent(CRASHING_DAG).format(dag_id=dag_id, crash_at=crash_at, deferrable=deferrable)
    )
    used = usage_used(leapi_server)
    dag_run = load_dag(path, dag_id).test(run_conf={"url": source_photos["astronaut.png"]})
    assert dag_run.state == "success", task_states(dag_run)
    assert task_states(dag_run)["enhance"][1] == 2, "the first try crashed, the second succeeded"
    summary = xcom_value(dag_run, "enhance")
    assert summary["status"] == "DONE"
    assert usage_used(leapi_server) == used + 1, "exactly one pipeline was created and charged"
