"""Planning: valid rows grouped by operation, cut into pipelines, packed into batches."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from leapi_provider.manifests.arrays import dictionary_array
from leapi_provider.manifests.schemas import VALID_ROWS_SCHEMA

PLAN_SCHEMA = pa.schema(
    [
        *VALID_ROWS_SCHEMA,
        pa.field("pipeline_index", pa.int64(), nullable=False),
        pa.field("batch_index", pa.int32(), nullable=False),
    ]
)


@dataclass(frozen=True)
class Plan:
    """Valid rows with the pipeline and batch each goes to, sorted by batch, pipeline, manifest row."""

    table: pa.Table
    urls_per_pipeline: int
    pipelines_per_batch: int
    num_pipelines: int
    num_batches: int
    num_operations: int

    def batch(self, index: int) -> pa.Table:
        """The rows of one batch (contiguous in :attr:`table`)."""
        batch_index = self.table["batch_index"].to_numpy()
        start, stop = np.searchsorted(batch_index, [index, index + 1])
        return self.table.slice(int(start), int(stop - start))

    def batches(self) -> Iterable[tuple[int, pa.Table]]:
        batch_index = self.table["batch_index"].to_numpy()
        bounds = np.searchsorted(batch_index, np.arange(self.num_batches + 1))
        for index in range(self.num_batches):
            yield index, self.table.slice(int(bounds[index]), int(bounds[index + 1] - bounds[index]))


def plan_batches(valid: pa.Table, *, urls_per_pipeline: int, max_batches: int) -> Plan:
    """Group valid rows by operation, cut each group into pipelines, and pack pipelines into batches.

    A pipeline carries at most ``urls_per_pipeline`` URLs of one operation (one POST, one credit per URL).
    Consecutive pipelines are packed into batches, the unit of one mapped task and one trigger: as many per
    batch as needed to keep the number of batches within ``max_batches`` (Airflow's ``[core]
    max_map_length``), so any manifest size fits. Groups are ordered by operation hash and rows by manifest
    row, so the same manifest always gives the same plan.

    :param valid: :attr:`ManifestValidation.valid` (or any table with its columns), possibly filtered;
        other columns (``attributes``, a caller's own) are carried along, after the plan's.
    """
    if urls_per_pipeline < 1:
        raise ValueError(f"urls_per_pipeline must be >= 1, got {urls_per_pipeline}")
    if max_batches < 1:
        raise ValueError(f"max_batches must be >= 1, got {max_batches}")
    n = valid.num_rows
    if n == 0:
        return Plan(PLAN_SCHEMA.empty_table(), urls_per_pipeline, 1, 0, 0, 0)
    hashes = dictionary_array(valid["operation_hash"])
    # Rank operations by their hash text so group order does not depend on the manifest's row order
    # (dense ranks: equal texts, should a dictionary repeat one, form one group).
    rank_of_entry = pc.rank(hashes.dictionary, sort_keys="ascending", tiebreaker="dense").to_numpy()
    group = rank_of_entry[hashes.indices.to_numpy(zero_copy_only=False)]
    rows = valid["manifest_row"].to_numpy()
    order = np.lexsort((rows, group))
    sorted_group = group[order]
    # Position of each row inside its group, then the pipeline it falls into.
    starts = np.flatnonzero(np.r_[True, sorted_group[1:] != sorted_group[:-1]])
    sizes = np.diff(np.r_[starts, n])
    position = np.arange(n) - np.repeat(starts, sizes)
    pipelines_per_group = -(-sizes // urls_per_pipeline)
    first_pipeline_of_group = np.r_[0, np.cumsum(pipelines_per_group)[:-1]]
    pipeline_index = np.repeat(first_pipeline_of_group, sizes) + position // urls_per_pipeline
    num_pipelines = int(pipelines_per_group.sum())
    pipelines_per_batch = max(1, -(-num_pipelines // max_batches))
    batch_index = (pipeline_index // pipelines_per_batch).astype(np.int32)
    extra = [name for name in valid.column_names if name not in PLAN_SCHEMA.names]
    table = valid.select([*VALID_ROWS_SCHEMA.names, *extra]).take(pa.array(order))
    table = table.append_column("pipeline_index", pa.array(pipeline_index, pa.int64()))
    table = table.append_column("batch_index", pa.array(batch_index, pa.int32()))
    table = table.select([*PLAN_SCHEMA.names, *extra])
    return Plan(
        table=table.cast(pa.schema([*PLAN_SCHEMA, *(table.schema.field(name) for name in extra)])),
        urls_per_pipeline=urls_per_pipeline,
        pipelines_per_batch=pipelines_per_batch,
        num_pipelines=num_pipelines,
        num_batches=int(batch_index[-1]) + 1,
        num_operations=len(starts),
    )
