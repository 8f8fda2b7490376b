"""One catalog batch, from submit through wait to transfer: the handle every step of a batch task shares.

A batch task builds one :class:`CatalogBatch` per execution (its first run, and each resume after a
deferral) from the run's settings, the run's identity and its batch file, and hands it to
:func:`~leapi_provider.catalog.submit.submit_batch`, the wait and
:func:`~leapi_provider.catalog.transfer.transfer_pipelines`. Everything the batch has done is in the
run's folder, so any execution (a resume in another process, a retry after a kill) carries on from there:

* ``batches/batch-NNNNN.parquet``: the images of the batch (written by the plan);
* ``submitted/batch-NNNNN/part-NNNNN.parquet``: one record per submitted image, written as each pipeline
  is accepted (submission order; :class:`SubmissionRecord`);
* ``results/batch-NNNNN.parquet``: the result rows of the pipelines transferred so far.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from leapi_provider import manifests
from leapi_provider.catalog.settings import CatalogSettings
from leapi_provider.catalog.storage import CatalogRun, RunFolder, batch_index_of
from leapi_provider.manifests import RESULT_SCHEMA
from leapi_provider.manifests.locations import is_local_filesystem

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

#: What a batch records per submitted image: the result table's own columns, plus the bookkeeping below.
SUBMITTED_SCHEMA = pa.schema(
    [
        *(
            RESULT_SCHEMA.field(name)
            for name in (
                "manifest_row",
                "image_id",
                "source_url",
                "preset",
                "operation_json",
                "operation_hash",
                "source_fingerprint",
                "pipeline_id",
            )
        ),
        pa.field("result_index", pa.int32()),
        RESULT_SCHEMA.field("submitted_at"),
        #: Whether this run paid for it (False: reused after a re-run).
        pa.field("newly_submitted", pa.bool_()),
        pa.field("submit_error", pa.string()),
    ]
)
#: Pipelines per part of a batch's submission record. Each accepted pipeline is recorded at once by
#: rewriting only the part it falls in: recording n pipelines writes O(n) rows in all, where rewriting one
#: whole file per submit wrote O(n^2) (a batch of 1,250 pipelines slowed from 340 to 120 submits a
#: minute). A reader reads ceil(n / this) small files, once per task execution.
RECORD_PART_PIPELINES = 100


@dataclass(frozen=True)
class CatalogBatch:
    """One batch of one catalog run.

    :param settings: the run's settings.
    :param run: the run's identity.
    :param index: the batch's number in the plan.
    """

    settings: CatalogSettings
    run: CatalogRun
    index: int
    folder: RunFolder = field(compare=False)

    @classmethod
    def of(cls, settings: CatalogSettings, run: CatalogRun, batch_uri: str) -> CatalogBatch:
        """The batch a plan's batch file URI names (the mapped task's argument)."""
        return cls(settings, run, batch_index_of(batch_uri), RunFolder(settings, run))

    @property
    def rows_path(self) -> ObjectStoragePath:
        return self.folder.batch(self.index)

    @property
    def submitted_path(self) -> ObjectStoragePath:
        return self.folder.submitted(self.index)

    @property
    def results_path(self) -> ObjectStoragePath:
        return self.folder.results(self.index)

    @cached_property
    def rows(self) -> pa.Table:
        """The batch's images, as the plan wrote them."""
        return manifests.read_parquet(self.rows_path)

    @cached_property
    def submissions(self) -> SubmissionRecord:
        """The batch's submission record, read once per execution (only this execution's submits add to it)."""
        return SubmissionRecord(self.submitted_path)

    def submitted_records(self) -> list[dict[str, Any]]:
        """The submission records so far, in submission order (empty before the first submit)."""
        return list(self.submissions.by_row.values())

    def __str__(self) -> str:
        return f"Batch {self.index}"


def pipeline_ids_of(records: list[dict[str, Any]]) -> list[int]:
    """The accepted pipelines of ``records``, in submission order."""
    return list(dict.fromkeys(r["pipeline_id"] for r in records if r["pipeline_id"] is not None))


def _record_parts(folder: ObjectStoragePath) -> list[ObjectStoragePath]:
    """The parts of a submission record, in order (hidden temporary files excluded)."""
    fs, path = manifests.resolve_location(folder)
    names = sorted(p.rsplit("/", 1)[-1] for p in fs.glob(f"{path}/part-*.parquet"))
    return [folder / name for name in names]


def _read_parts(parts: list[ObjectStoragePath]) -> pa.Table | None:
    """The records of ``parts`` in order, or ``None`` when there is none."""
    return pa.concat_tables([manifests.read_parquet(part) for part in parts]) if parts else None


def read_submitted(folder: ObjectStoragePath) -> pa.Table | None:
    """A batch's submission record (``folder``: :meth:`RunFolder.submitted`), or ``None`` before its first
    submit."""
    return _read_parts(_record_parts(folder))


class SubmissionRecord:
    """A batch's submission records by manifest row, in submission order, saved as the pipelines are
    accepted: this execution's records go to parts of their own after those of earlier executions, each
    part rewritten (atomically) until it holds :data:`RECORD_PART_PIPELINES` pipelines.

    :param folder: the record's folder (:meth:`RunFolder.submitted`).
    """

    def __init__(self, folder: ObjectStoragePath) -> None:
        self.folder = folder
        parts = _record_parts(folder)
        table = _read_parts(parts)
        self.by_row: dict[int, dict[str, Any]] = {
            r["manifest_row"]: r for r in (table.to_pylist() if table is not None else [])
        }
        self.existed = bool(parts)
        self._part = len(parts)
        self._part_records: list[dict[str, Any]] = []
        self._part_pipelines = 0

    def add(self, records: list[dict[str, Any]]) -> None:
        """Record one submitted pipeline's images (or one REJECTED group's), and save its part."""
        for record in records:
            self.by_row[record["manifest_row"]] = record
        self._part_records += records
        self._part_pipelines += 1
        self._save_part()
        if self._part_pipelines >= RECORD_PART_PIPELINES:
            self._part, self._part_records, self._part_pipelines = self._part + 1, [], 0

    def mark_empty(self) -> None:
        """Save an empty record (a batch with nothing to submit), so a re-run sees it was done."""
        if not self.existed and not self.by_row:
            self._save_part()

    def _save_part(self) -> None:
        table = pa.Table.from_pylist(self._part_records, schema=SUBMITTED_SCHEMA)
        path = self.folder / f"part-{self._part:05d}.parquet"
        fs, key = manifests.resolve_location(path)
        if is_local_filesystem(fs):
            manifests.write_parquet_atomic(table, path)
            return
        # An object store never shows a partial object: one PUT, where the temporary object, its copy and
        # its delete of write_parquet_atomic would make this submit's record cost three requests more.
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, compression="zstd")
        fs.pipe_file(key, sink.getvalue().to_pybytes())
