"""S3 notifications (as the SQS watcher's asset events carry them) to manifest writes and run ids: one run
per write of a manifest, however often its notification is delivered."""

from __future__ import annotations

import json
import re

import pytest

from leapi_provider.events.s3_events import ManifestArrival, arrivals_in_body, manifest_arrivals

#: Airflow's default [scheduler] allowed_run_id_pattern.
RUN_ID_PATTERN = re.compile(r"^[A-Za-z0-9_.~:+-]+$")


def s3_record(key: str, *, etag: str = "abc", sequencer: str | None = "0062E99A88DC407460",
              event: str = "ObjectCreated:Put", time: str = "2026-05-01T10:00:00.000Z",
              version: str | None = None) -> dict:  # fmt: skip
    """One ``Records[]`` entry as AWS documents it (notification-content-structure)."""
    obj = {"key": key, "size": 1024, "eTag": etag}
    if sequencer:
        obj["sequencer"] = sequencer
    if version:
        obj["versionId"] = version
    return {
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "awsRegion": "us-east-1",
        "eventTime": time,
        "eventName": event,
        "s3": {
            "s3SchemaVersion": "1.0",
            "bucket": {"name": "feeds", "arn": "arn:aws:s3:::feeds"},
            "object": obj,
        },
    }


def asset_event(*bodies: object) -> dict:
    """The ``extra`` of one watcher asset event: the SqsSensorTrigger's payload, bodies as SQS gives them."""
    batch = [
        {"MessageId": f"m{i}", "ReceiptHandle": "r", "Body": json.dumps(b)} for i, b in enumerate(bodies)
    ]
    return {"from_trigger": True, "payload": {"status": "success", "message_batch": batch}}


def test_an_s3_record_is_one_manifest_write_with_its_decoded_key():
    (arrival,) = arrivals_in_body(json.dumps({"Records": [s3_record("feeds/in/my+feed%C3%A9.parquet")]}))
    assert arrival.bucket == "feeds" and arrival.key == "feeds/in/my feedé.parquet"
    assert arrival.uri == "s3://feeds/feeds/in/my feedé.parquet"
    assert arrival.write_id == "sequencer:0062E99A88DC407460"
    run_id = arrival.run_id()
    assert RUN_ID_PATTERN.fullmatch(run_id) and run_id.startswith("manifest__feeds_in_my_feed_.parquet__")


def test_sns_and_eventbridge_envelopes_are_read():
    sns = {"Type": "Notification", "Message": json.dumps({"Records": [s3_record("a.parquet")]})}
    bridge = {
        "source": "aws.s3",
        "detail-type": "Object Created",
        "time": "2026-05-01T10:00:00Z",
        "detail": {"bucket": {"name": "feeds"}, "object": {"key": "b c.parquet", "etag": "e", "sequencer": "01"},
                   "reason": "PutObject"},
    }  # fmt: skip
    assert [a.key for a in arrivals_in_body(sns)] == ["a.parquet"]
    assert [a.key for a in arrivals_in_body(bridge)] == ["b c.parquet"]


@pytest.mark.parametrize(
    "body",
    [
        {"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": "feeds"},
        {"Records": [s3_record("a.parquet", event="ObjectRemoved:Delete")]},
        {"something": "else"},
        "not json at all",
    ],
    ids=["test-event", "deletion", "other-json", "not-json"],
)
def test_what_is_not_an_object_creation_is_skipped(body):
    assert arrivals_in_body(body if isinstance(body, str) else json.dumps(body)) == []


def test_a_notification_delivered_twice_is_one_write():
    record = s3_record("feeds/a.parquet")
    extras = [asset_event({"Records": [record]}), asset_event({"Records": [record]}, {"Records": [record]})]
    assert len(manifest_arrivals(extras)) == 1


def test_the_same_key_written_twice_is_two_writes_in_order():
    first = s3_record("feeds/a.parquet", sequencer="0062E99A88DC407460", time="2026-05-01T10:00:00.000Z")
    second = s3_record("feeds/a.parquet", sequencer="0062E99A88DC407461", time="2026-05-01T10:00:05.000Z")
    arrivals = manifest_arrivals([asset_event({"Records": [second]}), asset_event({"Records": [first]})])
    assert [a.sequencer for a in arrivals] == ["0062E99A88DC407460", "0062E99A88DC407461"]
    assert len({a.run_id() for a in arrivals}) == 2


def test_without_sequencer_or_version_a_write_is_its_time_and_etag():
    # moto's notifications carry neither; real S3 always sends the sequencer.
    a = s3_record("x.parquet", sequencer=None, time="2026-05-01T10:00:00.000Z", etag="e1")
    b = s3_record("x.parquet", sequencer=None, time="2026-05-01T10:00:01.000Z", etag="e1")
    arrivals = manifest_arrivals([asset_event({"Records": [a, b, a]})])
    assert [x.write_id for x in arrivals] == ["time:2026-05-01T10:00:00.000Z/etag:e1",
                                               "time:2026-05-01T10:00:01.000Z/etag:e1"]  # fmt: skip
    versioned = s3_record("x.parquet", sequencer=None, version="v7")
    assert arrivals_in_body(json.dumps({"Records": [versioned]}))[0].write_id == "version:v7"


def test_two_manifests_in_one_message_and_non_manifests_filtered():
    body = {"Records": [s3_record("in/a.parquet"), s3_record("in/b.PARQUET", sequencer="01"),
                        s3_record("in/readme.txt"), s3_record("in/", sequencer="02")]}  # fmt: skip
    assert [a.key for a in manifest_arrivals([asset_event(body)])] == ["in/a.parquet", "in/b.PARQUET"]
    assert len(manifest_arrivals([asset_event(body)], suffixes=())) == 3, "folders never count"


def test_run_ids_stay_short_and_distinct_for_long_keys():
    long_key = "feeds/" + "x" * 400 + ".parquet"
    a = ManifestArrival(bucket="b", key=long_key, sequencer="1")
    b = ManifestArrival(bucket="b", key=long_key, sequencer="2")
    assert len(a.run_id()) < 250 and a.run_id() != b.run_id()
    assert a.run_id("feed").startswith("feed__")


def test_events_without_a_message_batch_are_ignored():
    assert manifest_arrivals([{}, {"payload": None}, {"payload": {"message_batch": "?"}}]) == []
