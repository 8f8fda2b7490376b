"""One catalog batch, from submit through wait to transfer: the handle every step of a batch task shares.

A batch task builds one :class:`CatalogBatch` per execution (its first run, and each resume after a
deferral) from the run's settings, the run's identity and its batch file, and hands it to
:func:`~leapi_provider.catalog.submit.submit_batch`, the wait and
:func:`~leapi_provider.catalog.transfer.transfer_pipelines`. Everything the batch has done is in the
run's folder, so any execution (a resume in another process, a retry after a kill) carries on from there:

* ``batches/batch-NNNNN.parquet``: the images of the batch (written by the plan);
* ``submitted/batch-NNNNN.parquet``: one record per submitted image, written as each pipeline is
  accepted (submission order);
* ``results/batch-NNNNN.parquet``: the result rows of the pipelines transferred so far.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

from leapi_provider import manifests
from leapi_provider.catalog.settings import CatalogSettings
from leapi_provider.catalog.storage import CatalogRun, RunFolder, batch_index_of, read_parquet_if_exists

if TYPE_CHECKING:
    import pyarrow as pa
    from airflow.sdk import ObjectStoragePath


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

    def submitted_records(self) -> list[dict[str, Any]]:
        """The submission records so far, in submission order (empty before the first submit)."""
        table = read_parquet_if_exists(self.submitted_path)
        return table.to_pylist() if table is not None else []

    def __str__(self) -> str:
        return f"Batch {self.index}"


def pipeline_ids_of(records: list[dict[str, Any]]) -> list[int]:
    """The accepted pipelines of ``records``, in submission order."""
    return list(dict.fromkeys(r["pipeline_id"] for r in records if r["pipeline_id"] is not None))
