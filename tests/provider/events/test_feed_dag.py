"""``marketplace_feed_etl`` with ``LEAPI_FEED_SQS_QUEUE``: the dispatcher DAG, its watched asset and its
trigger; parsing stays cheap (the Amazon provider is imported by the triggerer only)."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys

import pytest

from devkit.airflow_dags import load_dag
from leapi_provider.events.triggers import SqsQueueWatchTrigger
from tests.fixtures.airflow import REPO
from tests.provider.dags.test_parse_cost import _PROBE, HEAVY_MODULES

QUEUE = "https://sqs.eu-west-1.amazonaws.com/123456789012/leapi-feed-manifests"
DAG_FILE = REPO / "dags" / "marketplace_feed_etl.py"


def test_without_the_queue_there_is_no_dispatcher(monkeypatch):
    monkeypatch.delenv("LEAPI_FEED_SQS_QUEUE", raising=False)
    with pytest.raises(LookupError):
        load_dag(DAG_FILE, "marketplace_feed_arrivals")
    assert load_dag(DAG_FILE, "marketplace_feed_etl").schedule is None


def test_the_dispatcher_watches_the_queue_and_starts_the_feed_dag(monkeypatch):
    monkeypatch.setenv("LEAPI_FEED_SQS_QUEUE", QUEUE)
    dag = load_dag(DAG_FILE, "marketplace_feed_arrivals")
    (asset,) = dag.timetable.asset_condition.objects
    (watcher,) = asset.watchers
    assert isinstance(watcher.trigger, SqsQueueWatchTrigger)
    kwargs = watcher.trigger.sqs_trigger_kwargs
    assert kwargs["sqs_queue"] == QUEUE and kwargs["wait_time_seconds"] == 20 and kwargs["max_messages"] == 10
    start = dag.get_task("start_run")
    assert start.partial_kwargs["trigger_dag_id"] == "marketplace_feed_etl"
    assert start.partial_kwargs["skip_when_already_exists"] is True
    assert start.partial_kwargs["logical_date"] is None
    assert [t.task_id for t in dag.get_task("manifest_arrivals").downstream_list] == ["start_run"]


def test_the_watch_trigger_round_trips_and_builds_the_amazon_trigger():
    trigger = SqsQueueWatchTrigger(sqs_trigger_kwargs={"sqs_queue": QUEUE, "aws_conn_id": "aws_default"})
    classpath, kwargs = trigger.serialize()
    json.dumps(kwargs)
    module, _, name = classpath.rpartition(".")
    rebuilt = getattr(importlib.import_module(module), name)(**kwargs)
    assert rebuilt.serialize() == (classpath, kwargs)
    from airflow.providers.amazon.aws.triggers.sqs import SqsSensorTrigger

    inner = SqsSensorTrigger(**kwargs["sqs_trigger_kwargs"])  # the kwargs are the Amazon trigger's own
    assert inner.sqs_queue == QUEUE


def test_parsing_with_the_queue_imports_nothing_heavy():
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, str(DAG_FILE)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "LEAPI_FEED_SQS_QUEUE": QUEUE},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    imported = json.loads(done.stdout.strip().splitlines()[-1])
    heavy = sorted(
        {n for n in imported for h in (*HEAVY_MODULES, "aiobotocore") if n == h or n.startswith(h + ".")}
    )
    assert heavy == []
    assert "airflow.providers.amazon.aws.triggers.sqs" not in imported
