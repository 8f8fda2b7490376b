"""The two opt-in modes of ``make e2e`` (issue #21): ``WEBHOOKS=1`` and ``EVENTS=1``.

**Webhooks** (``--webhooks``): ``leapi-server`` signs its webhooks; a real ``redis-server`` is the hand-off;
the receiver is the provider's plugin on the stack's api-server (installed with the provider); the
``leapi_webhooks_default`` connection points at it and ``LEAPI_FEED_WEBHOOKS_CONN_ID`` turns webhooks on in
``marketplace_feed_etl``. After the first run, :func:`check_webhook_run` measures, from leapi-server's
access log, its webhook delivery records and Airflow's event log:

* status reads per pipeline of the run (target <= 1.05);
* per batch, the seconds from its last pipeline's webhook to its trigger firing, i.e. the batch resuming
  (target <= 2 s; from the trigger's log in the task's log folder), and to the task running again (Airflow's
  event log: the scheduler and the executor's task start come on top, reported, not held to the target).
  A batch cannot resume within Airflow's reporting window after it deferred
  (:func:`leapi_provider.triggers.leapi.earliest_resume`): a webhook that came inside the window is
  measured from the window's end, and the report says so.

**Events** (``--events``): the bucket notifies an SQS queue (moto delivers S3 event notifications to SQS)
of ``incoming/*.parquet``; ``LEAPI_FEED_SQS_QUEUE`` makes ``dags/marketplace_feed_etl.py`` define
``marketplace_feed_arrivals``, whose AssetWatcher starts one feed run per manifest written.
:func:`check_event_start` drops a manifest there and waits for a run to start by itself and succeed.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from devkit.airflow_stack import AirflowStack
from devkit.catalog import put_manifest, sample_catalog
from tests.e2e import BUCKET, REGION

DAG_ID = "marketplace_feed_etl"
ARRIVALS_DAG_ID = "marketplace_feed_arrivals"
#: The signing secret of the e2e leapi-server (``--webhook-secret``): Standard Webhooks ``whsec_`` form.
SIGNING_SECRET = "whsec_" + "ZTJlLXdlYmhvb2tzLXNpZ25pbmctc2VjcmV0LTAxMjM0NTY="
TOKEN_SECRET = "e2e-webhooks-token-secret-5b2c9e"
MAX_READS_PER_PIPELINE = 1.05
MAX_RESUME_S = 2.0
QUEUE_NAME = "feed-manifests"
EVENT_KEY = "incoming/feed-arrival.parquet"


def webhook_server_args() -> tuple[str, ...]:
    """leapi-server's flags in webhook mode (it signs; a refused webhook is retried soon)."""
    return ("--webhook-secret", SIGNING_SECRET, "--webhook-retry-delays", "2,5,10")


def webhook_env(stack: AirflowStack, redis: Any) -> dict[str, str]:
    """The connections (receiver on the stack's api-server, Redis) and the DAG's opt-in."""
    from leapi_provider.webhooks.hook import RedisLocation, WebhookSettings
    from leapi_provider.webhooks.plugin import URL_PREFIX
    from tests.fixtures.webhooks import webhook_conn_env

    settings = WebhookSettings(
        base_url=f"{stack.api_url}{URL_PREFIX}",
        token_secret=TOKEN_SECRET,
        redis=RedisLocation(port=redis.port),
        signing_secret=SIGNING_SECRET,
    )
    return {**webhook_conn_env(settings, redis), "LEAPI_FEED_WEBHOOKS_CONN_ID": "leapi_webhooks_default"}


@dataclass
class BatchResume:
    map_index: int
    pipelines: int
    last_webhook: datetime
    window_end: datetime
    fired: datetime
    running: datetime | None

    @property
    def could_resume(self) -> datetime:
        """When the batch could first resume on its last webhook."""
        return max(self.last_webhook, self.window_end)

    @property
    def late_s(self) -> float:
        """Seconds from when the batch could first resume on its last webhook to its trigger firing."""
        return (self.fired - self.could_resume).total_seconds()

    def describe(self) -> str:
        inside = self.last_webhook < self.window_end
        text = f"batch[{self.map_index}]: {self.pipelines} pipelines; its trigger fired {self.late_s:.2f} s after "
        text += "the end of the reporting window its last webhook came in" if inside else "its last webhook"
        if self.running is not None:
            text += (
                f"; the task ran again {(self.running - self.could_resume).total_seconds():.2f} s after it"
            )
        return text


def check_webhook_run(stack: AirflowStack, server: Any, run_id: str, *, log_start: int) -> list[str]:
    """The webhook run's figures; returns the failed targets (empty when met)."""
    from leapi_provider.triggers.leapi import earliest_resume

    logs = server.logs()[log_start:]
    posts = logs.count('"POST /v1/pipeline HTTP')
    reads = len(re.findall(r'"GET /v1/pipeline/\d+ HTTP', logs))
    window = earliest_resume(0.0)  # (this process's config: the stack's defaults)
    resumes = [_batch_resume(stack, server, run_id, ti, window) for ti in _batches(stack, run_id)]
    failures = []
    per_pipeline = reads / max(posts, 1)
    print(f"  status reads: {reads} for {posts} pipelines = {per_pipeline:.3f} per pipeline "
          f"(target <= {MAX_READS_PER_PIPELINE})")  # fmt: skip
    if per_pipeline > MAX_READS_PER_PIPELINE:
        failures.append(f"{per_pipeline:.3f} status reads per pipeline > {MAX_READS_PER_PIPELINE}")
    for resume in filter(None, resumes):
        print(f"  {resume.describe()}")
        if resume.late_s > MAX_RESUME_S:
            failures.append(f"batch[{resume.map_index}] resumed {resume.late_s:.2f} s after it could")
    return failures


def _batches(stack: AirflowStack, run_id: str) -> list[dict[str, Any]]:
    return [ti for ti in stack.task_instances(DAG_ID, run_id) if ti["task_id"] == "batch"]


def _batch_resume(
    stack: AirflowStack, server: Any, run_id: str, ti: dict[str, Any], window: float
) -> BatchResume | None:
    """When the batch's last pipeline's webhook came, and when the batch ran again after it (``None``: it
    never deferred, or no webhook was delivered)."""
    map_index = ti["map_index"]
    response = stack.api().get(
        f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/batch/xcomEntries/pipeline_ids",
        params={"map_index": map_index},
    )
    pipeline_ids = response.json()["value"] if response.status_code == 200 else []
    delivered = [_delivered_at(server, pid) for pid in pipeline_ids]
    if not pipeline_ids or None in delivered:
        return None
    last_webhook = max(d for d in delivered if d is not None)
    logs = _task_log(stack, run_id, map_index)
    deferred = [when for when, event in logs if event.startswith("Deferring until") and when <= last_webhook]
    fired = [when for when, event in logs if event == "Trigger fired event" and when > last_webhook]
    if not deferred or not fired:
        return None
    window_end = datetime.fromtimestamp(max(deferred).timestamp() + window, UTC)
    running = [
        when
        for row in stack.event_log(DAG_ID, run_id)
        if row.get("task_id") == "batch" and row.get("map_index", -1) == map_index and row["event"] == "running"
        and (when := datetime.fromisoformat(row["when"])) > min(fired)
    ]  # fmt: skip
    return BatchResume(
        map_index, len(pipeline_ids), last_webhook, window_end, min(fired), min(running, default=None)
    )


def _task_log(stack: AirflowStack, run_id: str, map_index: int) -> list[tuple[datetime, str]]:
    """``(timestamp, event)`` of the batch's task and trigger log lines (JSON lines), in time order."""
    folder = stack.logs_dir / "tasks" / f"dag_id={DAG_ID}" / f"run_id={run_id}" / "task_id=batch"
    lines = []
    for path in (folder / f"map_index={map_index}").glob("attempt=*.log*"):
        for line in path.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError, KeyError, TypeError):
                entry = json.loads(line)
                lines.append((datetime.fromisoformat(entry["timestamp"]), str(entry["event"])))
    return sorted(lines)


def delivery_ends(server: Any, pipeline_id: int) -> list[float]:
    """When each accepted webhook attempt of the pipeline ended (Unix seconds), as leapi-server recorded it."""
    with server.client() as client:
        deliveries = client.get(f"/v1/pipeline/{pipeline_id}/webhooks").json()["deliveries"]
    return [
        datetime.fromisoformat(a["started_at"]).replace(tzinfo=UTC).timestamp() + a["duration_s"]
        for d in deliveries
        for a in d["attempts"]
        if a["status_code"] and a["status_code"] < 300
    ]


def _delivered_at(server: Any, pipeline_id: int) -> datetime | None:
    ends = delivery_ends(server, pipeline_id)
    return datetime.fromtimestamp(min(ends), UTC) if ends else None


# -- events ---------------------------------------------------------------------------------------------


def event_queue(s3: Any, sqs: Any) -> str:
    """The SQS queue the bucket notifies of ``incoming/*.parquet``; its URL."""
    queue_url = sqs.create_queue(QueueName=QUEUE_NAME)["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    with contextlib.suppress(Exception):
        s3.create_bucket(Bucket=BUCKET)
    rules = [{"Name": "prefix", "Value": "incoming/"}, {"Name": "suffix", "Value": ".parquet"}]
    s3.put_bucket_notification_configuration(
        Bucket=BUCKET,
        NotificationConfiguration={
            "QueueConfigurations": [
                {"QueueArn": arn, "Events": ["s3:ObjectCreated:*"], "Filter": {"Key": {"FilterRules": rules}}}
            ]
        },
    )
    sqs.purge_queue(QueueUrl=queue_url)  # (S3's s3:TestEvent, sent when the configuration is saved)
    return queue_url


def events_env(queue_url: str) -> dict[str, str]:
    """The feed DAG file's event-driven opt-in, and its default locations in the e2e bucket."""
    return {
        "LEAPI_FEED_SQS_QUEUE": queue_url,
        "LEAPI_FEED_RESULTS": f"s3://{BUCKET}/events/results",
        "LEAPI_FEED_IMAGES": f"s3://{BUCKET}/events/cdn",
        "LEAPI_FEED_EXPORT": f"s3://{BUCKET}/events/export",
    }


def sqs_client(endpoint_url: str) -> Any:
    import boto3

    return boto3.client(
        "sqs",
        endpoint_url=endpoint_url,
        region_name=REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def check_event_start(stack: AirflowStack, s3: Any, sources: Path, base_url: str, *, timeout: float) -> str:
    """Drop a manifest into ``incoming/``; the run it starts by itself, once it succeeded."""
    before = {run["dag_run_id"] for run in _runs(stack)}
    table = sample_catalog(sources, base_url, 4)
    uri = put_manifest(s3, table, bucket=BUCKET, key=EVENT_KEY)
    dropped = time.monotonic()
    deadline = dropped + timeout
    while time.monotonic() < deadline:
        new = [run for run in _runs(stack) if run["dag_run_id"] not in before]
        if new:
            break
        stack.check_alive()
        time.sleep(1)
    else:
        raise AssertionError(f"no run of {DAG_ID} started within {timeout:.0f} s of dropping {uri}")
    (run,) = new
    started = time.monotonic() - dropped
    if run["conf"].get("manifest") != uri:
        raise AssertionError(f"the event's run reads {run['conf'].get('manifest')!r}, not {uri}")
    state = stack.wait_for_run(DAG_ID, run["dag_run_id"], timeout=timeout)
    if state != "success":
        raise AssertionError(
            f"run {run['dag_run_id']} ended {state}:\n{stack.run_report(DAG_ID, run['dag_run_id'])}"
        )
    print(f"  {uri} dropped: run {run['dag_run_id']} started by itself {started:.1f} s later; success "
          f"{time.monotonic() - dropped:.1f} s after the drop")  # fmt: skip
    return str(run["dag_run_id"])


def _runs(stack: AirflowStack) -> list[dict[str, Any]]:
    return stack._paged(f"/dags/{DAG_ID}/dagRuns", "dag_runs", {})
