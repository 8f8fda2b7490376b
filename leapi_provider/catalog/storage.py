"""Where a catalog run keeps its files: locations as ``ObjectStoragePath``, the run's identity and folder."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import pyarrow as pa

from leapi_provider import manifests
from leapi_provider.catalog.settings import CatalogSettings

if TYPE_CHECKING:
    from airflow.sdk import Context, ObjectStoragePath


def storage_path(location: str, conn_id: str | None) -> ObjectStoragePath:
    """An ``ObjectStoragePath`` for a URI (``s3://...``, ``file://...``) or a local path."""
    from airflow.sdk import ObjectStoragePath

    if "://" not in location:
        return ObjectStoragePath(f"file://{os.path.abspath(location)}")
    if location.startswith("file://"):
        return ObjectStoragePath(location)
    return ObjectStoragePath(location, conn_id=conn_id)


def uri_of(path: ObjectStoragePath) -> str:
    """The plain URI of a path (``s3://bucket/key``, ``file:///abs``): no connection id in it."""
    return path.fs.unstrip_protocol(path.path)


@dataclass(frozen=True)
class CatalogRun:
    """Who is running: the DAG run, its date, and the key its files are named by.

    ``key`` is derived from the DAG and the logical date (the run id when there is none): a run that is
    cleared and re-run, or re-triggered for the same logical date, finds the work of its earlier attempt
    (submitted pipelines, written files) and resumes it.
    """

    dag_id: str
    dag_run_id: str
    run_date: str
    key: str

    @classmethod
    def of(
        cls, dag_id: str, dag_run_id: str, logical_date: datetime | None, run_after: datetime | None = None
    ) -> CatalogRun:
        stamp = logical_date or run_after or datetime.now(UTC)
        identity = f"{dag_id}__{logical_date.isoformat()}" if logical_date else f"{dag_id}__{dag_run_id}"
        return cls(dag_id, dag_run_id, stamp.date().isoformat(), manifests.run_key(identity))


class RunFolder:
    """The files of one DAG run's work, under ``<results>/_runs/<run key>/`` (hidden from table readers).

    A dry run keeps its own under ``<results>/_dry_runs/<run key>/``: a real run of the same logical date
    must plan afresh, not resume the dry run's plan.
    """

    def __init__(self, settings: CatalogSettings, run: CatalogRun):
        self.settings = settings
        kind = "_dry_runs" if settings.dry_run else "_runs"
        self.root = storage_path(settings.results, settings.aws_conn_id) / kind / run.key

    def path(self, uri: str) -> ObjectStoragePath:
        return storage_path(uri, self.settings.aws_conn_id)

    @property
    def plan(self) -> ObjectStoragePath:
        return self.root / "plan.json"

    @property
    def carried(self) -> ObjectStoragePath:
        """Result rows decided by the plan itself: rejected, skipped, deferred."""
        return self.root / "carried.parquet"

    @property
    def preview(self) -> ObjectStoragePath:
        """A dry run's preview: one result-shaped row per manifest row (``planned`` for what would be sent)."""
        return self.root / "preview.parquet"

    @property
    def attributes(self) -> ObjectStoragePath:
        return self.root / "attributes.parquet"

    def batch(self, index: int) -> ObjectStoragePath:
        return self.root / "batches" / f"batch-{index:05d}.parquet"

    def submitted(self, index: int) -> ObjectStoragePath:
        """The folder of a batch's submission record: one ``part-NNNNN.parquet`` per part
        (:class:`~leapi_provider.catalog.batch.SubmissionRecord`)."""
        return self.root / "submitted" / f"batch-{index:05d}"

    def results(self, index: int) -> ObjectStoragePath:
        return self.root / "results" / f"batch-{index:05d}.parquet"


def batch_index_of(uri: str) -> int:
    match = re.search(r"batch-(\d+)\.parquet$", uri)
    if not match:
        raise ValueError(f"not a batch file: {uri}")
    return int(match.group(1))


def read_parquet_if_exists(path: ObjectStoragePath) -> pa.Table | None:
    """The table at ``path``, or ``None`` when no file is there (yet)."""
    return manifests.read_parquet(path) if path.exists() else None


def run_context(
    context: Context, *, leapi_conn_id: str, aws_conn_id: str | None
) -> tuple[CatalogSettings, CatalogRun]:
    """The settings (the DAG run's params and the task's connections) and the identity of the catalog run
    a task belongs to. Called once per task execution.

    :raises ValueError: the run's params name a connection (see :meth:`CatalogSettings.from_params`).
    """
    dag_run = context["dag_run"]
    settings = CatalogSettings.from_params(
        context["params"], leapi_conn_id=leapi_conn_id, aws_conn_id=aws_conn_id
    )
    return settings, CatalogRun.of(dag_run.dag_id, dag_run.run_id, dag_run.logical_date, dag_run.run_after)
