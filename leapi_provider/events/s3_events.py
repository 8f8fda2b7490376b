"""S3 "object created" notifications, as an AssetWatcher on an SQS queue delivers them, to manifest arrivals.

An asset event of a watcher carries ``{"from_trigger": true, "payload": <trigger event payload>}``; the
Amazon provider's ``SqsSensorTrigger`` puts the SQS messages it read in ``payload["message_batch"]``, each with
its ``Body``. Three body shapes are read:

* S3 → SQS: ``{"Records": [{"eventName": "ObjectCreated:Put", "s3": {"bucket": ..., "object": ...}}]}``
  (object keys URL-encoded, ``+`` for a space);
* S3 → SNS → SQS: an SNS envelope whose ``Message`` is the above;
* S3 → EventBridge → SQS: ``{"source": "aws.s3", "detail-type": "Object Created", "detail": {...}}``.

S3's ``s3:TestEvent`` (sent when the notification is configured), deletions and keys without a manifest
suffix are skipped; a body that is none of these is logged and skipped.

**Identity.** One arrival is one *write* of the object: S3's ``sequencer`` (unique per write of a key), else
the ``versionId``, else the event time with the ETag (moto sends neither sequencer nor versionId). A
notification delivered twice (SQS and S3 are at-least-once) is the same write, hence the same run id: the
dispatcher's runs are idempotent by run id. A key written twice is two writes, two runs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_plus

log = logging.getLogger(__name__)

#: Manifest files the dispatcher starts runs for (the bucket notification should filter the same way).
DEFAULT_MANIFEST_SUFFIXES = (".parquet",)
#: Airflow's default ``[scheduler] allowed_run_id_pattern`` is ``^[A-Za-z0-9_.~:+-]+$``.
_RUN_ID_UNSAFE = re.compile(r"[^A-Za-z0-9_.~:+-]+")
_RUN_ID_KEY_CHARS = 120


@dataclass(frozen=True, kw_only=True)
class ManifestArrival:
    """One write of a manifest object, from its S3 notification."""

    bucket: str
    key: str
    etag: str | None = None
    size: int | None = None
    version_id: str | None = None
    sequencer: str | None = None
    event_time: str | None = None
    event_name: str | None = None

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    @property
    def write_id(self) -> str:
        """What tells this write of the key from another (see the module docstring)."""
        if self.sequencer:
            return f"sequencer:{self.sequencer}"
        if self.version_id:
            return f"version:{self.version_id}"
        return f"time:{self.event_time}/etag:{self.etag}"

    def run_id(self, prefix: str = "manifest") -> str:
        """A run id naming the key, unique per write: ``manifest__feeds_a.parquet__<16 hex>``."""
        digest = hashlib.sha256(f"{self.bucket}\0{self.key}\0{self.write_id}".encode()).hexdigest()[:16]
        readable = _RUN_ID_UNSAFE.sub("_", self.key).strip("_")[-_RUN_ID_KEY_CHARS:]
        return f"{prefix}__{readable}__{digest}"


def _record_arrival(record: Mapping[str, Any]) -> ManifestArrival | None:
    """A ``Records[]`` entry of an S3 notification (None: not an object creation)."""
    if record.get("eventSource") not in (None, "aws:s3"):
        return None
    if not str(record.get("eventName", "")).startswith("ObjectCreated:"):
        return None
    s3 = record.get("s3") or {}
    obj = s3.get("object") or {}
    bucket = (s3.get("bucket") or {}).get("name")
    if not bucket or not obj.get("key"):
        return None
    return ManifestArrival(
        bucket=bucket,
        key=unquote_plus(obj["key"]),
        etag=obj.get("eTag") or obj.get("etag"),
        size=obj.get("size"),
        version_id=obj.get("versionId"),
        sequencer=obj.get("sequencer"),
        event_time=record.get("eventTime"),
        event_name=record.get("eventName"),
    )


def _eventbridge_arrival(body: Mapping[str, Any]) -> ManifestArrival | None:
    if body.get("detail-type") != "Object Created":
        return None
    detail = body.get("detail") or {}
    obj = detail.get("object") or {}
    bucket = (detail.get("bucket") or {}).get("name")
    if not bucket or not obj.get("key"):
        return None
    return ManifestArrival(
        bucket=bucket,
        key=obj["key"],  # (EventBridge keys are not URL-encoded)
        etag=obj.get("etag") or obj.get("eTag"),
        size=obj.get("size"),
        version_id=obj.get("version-id"),
        sequencer=obj.get("sequencer"),
        event_time=body.get("time"),
        event_name=f"ObjectCreated:{detail.get('reason', '')}",
    )


def arrivals_in_body(body: Any) -> list[ManifestArrival]:
    """The object creations one SQS message body reports (a JSON string or an already decoded object)."""
    if isinstance(body, (str, bytes)):
        try:
            body = json.loads(body)
        except json.JSONDecodeError:
            log.warning("Skipping an SQS message that is not JSON: %.200r", body)
            return []
    if not isinstance(body, Mapping):
        return []
    if body.get("Type") == "Notification" and "Message" in body:  # SNS envelope
        return arrivals_in_body(body["Message"])
    if body.get("Event") == "s3:TestEvent":
        return []
    if body.get("source") == "aws.s3":
        arrival = _eventbridge_arrival(body)
        return [arrival] if arrival else []
    if isinstance(body.get("Records"), list):
        return [a for a in (_record_arrival(r) for r in body["Records"] if isinstance(r, Mapping)) if a]
    log.warning("Skipping an SQS message that is no S3 notification: %.200r", body)
    return []


def _messages(extra: Mapping[str, Any]) -> Iterable[Any]:
    payload = extra.get("payload")
    if not isinstance(payload, Mapping):
        return []
    batch = payload.get("message_batch")
    return batch if isinstance(batch, list) else []


def manifest_arrivals(
    asset_event_extras: Iterable[Mapping[str, Any]],
    *,
    suffixes: Sequence[str] = DEFAULT_MANIFEST_SUFFIXES,
) -> list[ManifestArrival]:
    """The distinct manifest writes in the extras of a run's triggering asset events, oldest first.

    :param asset_event_extras: each event's ``extra`` (``{"from_trigger": true, "payload": {...}}``).
    :param suffixes: keys must end with one of these (case-insensitive); empty: any key but a "folder".
    """
    found: dict[str, ManifestArrival] = {}
    wanted = tuple(s.lower() for s in suffixes)
    for extra in asset_event_extras:
        for message in _messages(extra):
            body = message.get("Body") if isinstance(message, Mapping) else None
            for arrival in arrivals_in_body(body):
                if arrival.key.endswith("/") or (wanted and not arrival.key.lower().endswith(wanted)):
                    continue
                found.setdefault(arrival.run_id(), arrival)
    return sorted(found.values(), key=lambda a: (a.event_time or "", a.sequencer or "", a.key))
