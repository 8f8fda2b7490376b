"""Event-driven feed runs: a manifest landing in S3 starts one run of a catalog DAG, by itself.

    S3 bucket ──(object created)──► SQS queue ──► AssetWatcher(SqsSensorTrigger) ──► asset event
        ──► <dispatcher DAG>: manifest_arrivals ──► start_run (one TriggerDagRun per manifest write)
            ──► <target DAG> run, conf {"manifest": "s3://bucket/key"}, run id naming the key and the write

Why a dispatcher rather than scheduling the catalog DAG on the asset itself: Airflow gives an asset-triggered
DAG run *every* asset event queued since the previous one, so two manifests landing together (or one
landing while a run is active) would share one run. The dispatcher reads every triggering event
(``triggering_asset_events``), and starts one target run per manifest write with a run id derived from the
write (:meth:`~.s3_events.ManifestArrival.run_id`) and ``skip_when_already_exists``: a notification
delivered twice finds its run there and is skipped, whichever dispatcher run sees it.

Opt-in and parse-time cheap: the Amazon provider (the ``events`` extra:
``apache-airflow-providers-amazon[aiobotocore]``) is imported by the triggerer only, and the standard
provider's ``TriggerDagRunOperator`` by :func:`feed_manifest_dispatcher`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from leapi_provider.events.s3_events import DEFAULT_MANIFEST_SUFFIXES

#: SQS long polling: one ReceiveMessage call waits up to this long for a message (20 s is SQS's maximum).
SQS_WAIT_TIME_S = 20
#: Messages one ReceiveMessage call may return (10 is SQS's maximum).
SQS_MAX_MESSAGES = 10


def feed_manifest_asset(
    *,
    name: str,
    queue_url: str,
    aws_conn_id: str | None = "aws_default",
    region_name: str | None = None,
) -> Any:
    """An Asset updated whenever the SQS queue at ``queue_url`` receives S3 notifications.

    The watcher is the Amazon provider's ``SqsSensorTrigger`` (through :class:`~.triggers.SqsQueueWatchTrigger`,
    which imports it in the triggerer only) with long polling: one ReceiveMessage per ``SQS_WAIT_TIME_S`` when
    idle. It deletes what it read, and its trigger event (the messages) becomes the asset event's
    ``extra["payload"]``.
    """
    from airflow.sdk import Asset, AssetWatcher

    from leapi_provider.events.triggers import SqsQueueWatchTrigger

    trigger = SqsQueueWatchTrigger(
        sqs_trigger_kwargs={
            "sqs_queue": queue_url,
            "aws_conn_id": aws_conn_id,
            "region_name": region_name,
            "max_messages": SQS_MAX_MESSAGES,
            "wait_time_seconds": SQS_WAIT_TIME_S,
            "waiter_delay": 0,  # the long poll is the wait
        }
    )
    return Asset(name=name, watchers=[AssetWatcher(name=f"{name}_sqs", trigger=trigger)])


def arrivals_task_callable(
    *, conf_key: str, extra_conf: Mapping[str, Any], suffixes: Sequence[str], run_id_prefix: str
) -> list[dict[str, Any]]:
    """The ``manifest_arrivals`` task: one ``TriggerDagRunOperator`` kwargs mapping per manifest write."""
    from airflow.sdk import get_current_context

    from leapi_provider.events.s3_events import manifest_arrivals

    context = get_current_context()
    events = [event for events in context["triggering_asset_events"].values() for event in events]
    arrivals = manifest_arrivals((event.extra for event in events), suffixes=suffixes)
    print(f"{len(events)} asset event(s), {len(arrivals)} manifest write(s)")  # (in the task log)
    starts = []
    for arrival in arrivals:
        run_id = arrival.run_id(run_id_prefix)
        print(f"  {arrival.uri} ({arrival.write_id}, {arrival.event_time}) -> run {run_id}")
        starts.append(
            {
                "trigger_run_id": run_id,
                "conf": {**extra_conf, conf_key: arrival.uri},
                "note": f"Started by {arrival.event_name or 'an S3 notification'} of {arrival.uri} "
                f"at {arrival.event_time or '?'} ({arrival.write_id})",
            }
        )
    return starts


def feed_manifest_dispatcher(
    *,
    dag_id: str,
    target_dag_id: str,
    queue_url: str,
    aws_conn_id: str | None = "aws_default",
    region_name: str | None = None,
    asset_name: str | None = None,
    conf_key: str = "manifest",
    extra_conf: Mapping[str, Any] | None = None,
    suffixes: Sequence[str] = DEFAULT_MANIFEST_SUFFIXES,
    run_id_prefix: str = "manifest",
    tags: Sequence[str] = ("leapi", "events"),
) -> Any:
    """The dispatcher DAG ``dag_id``: scheduled on the queue's asset, it starts one ``target_dag_id`` run per
    manifest written (see the module docstring).

    :param queue_url: the SQS queue the bucket notifies (S3 → SQS, S3 → SNS → SQS or EventBridge → SQS).
    :param conf_key: the target run's conf key that gets ``s3://bucket/key``.
    :param extra_conf: more conf for every target run.
    :param suffixes: manifest keys end with one of these.
    :param run_id_prefix: the target runs' run ids start with it.
    """
    from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
    from airflow.sdk import DAG, task

    asset = feed_manifest_asset(
        name=asset_name or f"{target_dag_id}_manifests",
        queue_url=queue_url,
        aws_conn_id=aws_conn_id,
        region_name=region_name,
    )
    with DAG(
        dag_id=dag_id,
        schedule=[asset],
        start_date=datetime(2026, 1, 1),
        catchup=False,
        max_active_runs=1,
        tags=list(tags),
        doc_md=__doc__,
    ) as dag:
        arrivals = task(task_id="manifest_arrivals", retries=2)(arrivals_task_callable)(
            conf_key=conf_key, extra_conf=dict(extra_conf or {}), suffixes=list(suffixes),
            run_id_prefix=run_id_prefix,
        )  # fmt: skip
        TriggerDagRunOperator.partial(
            task_id="start_run",
            trigger_dag_id=target_dag_id,
            logical_date=None,  # runs of one instant must not collide on the logical date
            skip_when_already_exists=True,
            wait_for_completion=False,
            retries=2,
        ).expand_kwargs(arrivals)
    return dag
