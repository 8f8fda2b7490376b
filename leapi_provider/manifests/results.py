"""Result tables: one row per manifest row and run, written partitioned and atomically, read back."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, Self

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from leapi_provider.manifests.arrays import as_plain
from leapi_provider.manifests.locations import (
    AtomicUpload,
    Location,
    arrow_filesystem,
    atomic_write,
    resolve_location,
)
from leapi_provider.manifests.schemas import (
    PRESETS,
    RESULT_FILE_SCHEMA,
    RESULT_PARTITIONING,
    RESULT_SCHEMA,
    TIMESTAMP_UTC,
    UNKNOWN_PRESET_PARTITION,
    ResultStatus,
)


def run_key(dag_run_id: str) -> str:
    """A file-name-safe, unique form of a DAG run id (readable prefix + short hash)."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", dag_run_id).strip("_.")[:60]
    return f"{slug}-{hashlib.sha256(dag_run_id.encode()).hexdigest()[:10]}"


def empty_results() -> pa.Table:
    return RESULT_SCHEMA.empty_table()


def conform_results(table: pa.Table | Sequence[Mapping[str, Any]]) -> pa.Table:
    """A table (or rows) with the result schema: missing columns null, types cast, unknown columns dropped.

    :raises ValueError: a status outside :class:`ResultStatus`, or a row without status.
    """
    if not isinstance(table, pa.Table):
        # Keys a row lacks are null (from_pylist alone would take the columns of the first row only).
        table = pa.Table.from_pylist(list(table), schema=RESULT_SCHEMA)
    n = table.num_rows
    columns = []
    for f in RESULT_SCHEMA:
        if f.name in table.column_names:
            column = as_plain(table[f.name])
            if (
                pa.types.is_timestamp(f.type)
                and pa.types.is_timestamp(column.type)
                and column.type.tz is None
            ):
                column = pc.assume_timezone(column, "UTC")
            columns.append(column.cast(f.type))
        else:
            columns.append(pa.nulls(n, f.type))
    result = pa.Table.from_arrays(columns, schema=RESULT_SCHEMA)
    statuses = set(pc.unique(result["status"]).to_pylist())
    unknown = statuses - {s.value for s in ResultStatus}
    if unknown:
        raise ValueError(f"result rows with unknown status {sorted(map(str, unknown))}")
    return result


@dataclass(frozen=True)
class WrittenResults:
    """What :func:`write_result_table` wrote: the part files and the commit marker."""

    files: list[str]
    commit_marker: str
    rows: int


#: The schema of each result file (the version mark of :data:`RESULT_SCHEMA` kept).
_FILE_SCHEMA = RESULT_FILE_SCHEMA.with_metadata(RESULT_SCHEMA.metadata)


class ResultTableWriter:
    """Writes one run's result rows as they come, a row group per :meth:`write`, partitioned
    ``run_date=YYYY-MM-DD/preset=NAME/`` under ``root``; :meth:`commit` publishes them.

    What :func:`write_result_table` does for a whole table, for a run too large to hold: the writer keeps one
    open file per preset and the counts by status, never the rows. Until :meth:`commit` the files are hidden
    temporary files; leaving the ``with`` block without committing (an error, or a check that failed)
    removes them, so no reader ever sees part of a run.

    :param file_key: names the files (default: derived from ``dag_run_id``); pass something more stable
        than the run id (a re-triggered run of the same logical date then replaces the same files).
    """

    def __init__(self, root: Location, *, dag_run_id: str, run_date: date | str, file_key: str | None = None):
        self.fs, base = resolve_location(root)
        self.base = base.rstrip("/")
        self.dag_run_id = dag_run_id
        self.day = run_date.isoformat() if isinstance(run_date, date) else str(run_date)
        self.key = file_key or run_key(dag_run_id)
        self.recorded_at = pa.scalar(datetime.now(UTC), TIMESTAMP_UTC)
        self.rows = 0
        self.status_counts: dict[str, int] = {}
        self._files: dict[str, tuple[AtomicUpload, pq.ParquetWriter]] = {}

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.discard()

    def write(self, results: pa.Table) -> None:
        """Append rows (conformed to :data:`RESULT_SCHEMA`; ``recorded_at``, ``run_key`` and ``dag_run_id``
        filled where null). Rows without a known preset go to ``preset=__unknown__``."""
        results = conform_results(results)
        for name, value in (
            ("recorded_at", self.recorded_at),
            ("run_key", pa.scalar(self.key)),
            ("dag_run_id", pa.scalar(self.dag_run_id)),
        ):
            index = RESULT_SCHEMA.get_field_index(name)
            results = results.set_column(index, name, pc.fill_null(results[name], value))
        known = pc.fill_null(pc.is_in(results["preset"], pa.array(sorted(PRESETS))), False)
        presets = pc.if_else(known, results["preset"], pa.scalar(UNKNOWN_PRESET_PARTITION))
        for preset in sorted(set(pc.unique(presets).to_pylist())):
            part = results.filter(pc.equal(presets, preset)).select(RESULT_FILE_SCHEMA.names)
            self._writer(preset).write_table(part)
        counts = results.group_by("status").aggregate([("status", "count")])
        for status, count in zip(
            counts["status"].to_pylist(), counts["status_count"].to_pylist(), strict=True
        ):
            self.status_counts[status] = self.status_counts.get(status, 0) + count
        self.rows += results.num_rows

    def _writer(self, preset: str) -> pq.ParquetWriter:
        if preset not in self._files:
            path = f"{self.base}/run_date={self.day}/preset={preset}/part-{self.key}.parquet"
            upload = AtomicUpload(self.fs, path)
            self._files[preset] = (upload, pq.ParquetWriter(upload.handle, _FILE_SCHEMA, compression="zstd"))
        return self._files[preset][1]

    def commit(self) -> WrittenResults:
        """Publish the files (presets in name order), then the commit marker that lists them."""
        files = []
        for preset in sorted(self._files):
            upload, writer = self._files[preset]
            writer.close()
            files.append(upload.publish())
        self._files.clear()
        payload = {
            "dag_run_id": self.dag_run_id,
            "run_key": self.key,
            "run_date": self.day,
            "rows": self.rows,
            "files": files,
            "status_counts": self.status_counts,
            "committed_at": datetime.now(UTC).isoformat(),
        }
        data = json.dumps(payload, indent=2, sort_keys=True).encode()
        path = f"{self.base}/_commits/run_date={self.day}/{self.key}.json"
        marker = atomic_write(self.fs, path, lambda handle: handle.write(data))
        return WrittenResults(files=files, commit_marker=marker, rows=self.rows)

    def discard(self) -> None:
        """Remove the files not yet published (nothing once :meth:`commit` has run)."""
        for upload, writer in self._files.values():
            try:
                writer.close()
            finally:
                upload.discard()
        self._files.clear()


def write_result_table(
    results: pa.Table, root: Location, *, dag_run_id: str, run_date: date | str, file_key: str | None = None
) -> WrittenResults:
    """Write one run's result rows under ``root``, partitioned ``run_date=YYYY-MM-DD/preset=NAME/``.

    Every file is written atomically (:func:`write_parquet_atomic`) under a name derived from the run id,
    so a retried write replaces the same files; pass ``file_key`` to name them after something more stable
    than the run id (a re-triggered run of the same logical date then replaces them too). Rows without a
    preset (rejected before one was known) go to ``preset=__unknown__``. The commit marker
    ``_commits/run_date=.../<run>.json`` lists the files and is written last. :class:`ResultTableWriter`
    does the same for rows that come in parts.
    """
    with ResultTableWriter(root, dag_run_id=dag_run_id, run_date=run_date, file_key=file_key) as writer:
        writer.write(results)
        return writer.commit()


def read_result_tables(
    root: Location, *, filter: pc.Expression | None = None, columns: Sequence[str] | None = None
) -> pa.Table:
    """Every result row written under ``root`` (all runs), with the result schema; empty if none yet.

    Hidden and ``_``-prefixed paths (temporary files, commit markers) are skipped, as every Parquet reader
    does. ``run_date`` and ``preset`` come from the partition path.

    :param filter: a pyarrow expression pushed down to the files (e.g. ``pc.field("status") == "done"``).
    """
    fs, base = resolve_location(root)
    base = base.rstrip("/")
    wanted = list(columns) if columns is not None else RESULT_SCHEMA.names
    try:
        exists = fs.isdir(base)
    except OSError:  # some stores raise instead of answering False for a missing bucket prefix
        exists = False
    if not exists:
        return RESULT_SCHEMA.empty_table().select(wanted)
    dataset = ds.dataset(
        base,
        schema=RESULT_SCHEMA,
        format="parquet",
        filesystem=arrow_filesystem(fs),
        partitioning=ds.partitioning(RESULT_PARTITIONING, flavor="hive"),
    )
    table = dataset.to_table(columns=wanted, filter=filter)
    if "preset" in wanted:
        index = table.schema.get_field_index("preset")
        preset = table["preset"]
        table = table.set_column(
            index,
            "preset",
            pc.if_else(pc.equal(preset, UNKNOWN_PRESET_PARTITION), pa.scalar(None, pa.string()), preset),
        )
    return table


def latest_results(results: pa.Table, *, statuses: Iterable[ResultStatus | str] | None = None) -> pa.Table:
    """The latest row per ``image_id`` (by ``recorded_at``, then ``finished_at``), optionally of some statuses.

    Use it on :func:`read_result_tables` to find, say, the last successful enhancement of every image.
    """
    if statuses is not None:
        wanted = pa.array(sorted(ResultStatus(s).value for s in statuses))
        results = results.filter(pc.is_in(results["status"], wanted))
    results = results.filter(pc.is_valid(results["image_id"]))
    if results.num_rows == 0:
        return results

    def newest_first(name: str) -> np.ndarray:
        values = results[name].cast(pa.int64()).fill_null(np.iinfo(np.int64).min)
        return -values.to_numpy().astype(np.float64)  # (float: negating int64 min would overflow)

    ids = pc.dictionary_encode(results["image_id"].combine_chunks())
    # (each distinct id's rank in id order, sorted by Arrow: the output is in image_id order)
    by_id = pc.sort_indices(ids.dictionary).to_numpy()
    rank = np.empty(len(by_id), dtype=np.int64)
    rank[by_id] = np.arange(len(by_id))
    group = rank[ids.indices.to_numpy(zero_copy_only=False)]
    order = np.lexsort((newest_first("finished_at"), newest_first("recorded_at"), group))
    first = np.r_[True, group[order][1:] != group[order][:-1]]
    return results.take(pa.array(order[first]))


def rejects_as_results(rejects: pa.Table, *, dag_run_id: str, run_date: date | str) -> pa.Table:
    """Result rows (status ``rejected_row``, error = the reason) for a rejects table."""
    n = rejects.num_rows
    preset = pc.replace_substring_regex(
        pc.utf8_lower(pc.utf8_trim_whitespace(rejects["preset"])), "^preset/", ""
    )
    preset = pc.if_else(
        pc.fill_null(pc.is_in(preset, pa.array(sorted(PRESETS))), False), preset, pa.scalar(None, pa.string())
    )
    day = run_date.isoformat() if isinstance(run_date, date) else str(run_date)
    return conform_results(
        pa.table(
            {
                "image_id": rejects["image_id"],
                "manifest_row": rejects["manifest_row"],
                "source_url": rejects["source_url"],
                "preset": preset,
                "status": pa.array([ResultStatus.REJECTED_ROW.value] * n, pa.string()),
                "error": rejects["reason"],
                "dag_run_id": pa.array([dag_run_id] * n, pa.string()),
                "run_date": pa.array([day] * n, pa.string()),
            }
        )
    )
