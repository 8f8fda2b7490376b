"""The result table written part by part (``ResultTableWriter``) and Parquet read part by part."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from leapi_provider import manifests
from leapi_provider.manifests import (
    ResultTableWriter,
    read_parquet_parts,
    read_result_tables,
    write_result_table,
)


def _rows(start: int, stop: int, *, preset: str | None = "marketplace", status: str = "done") -> pa.Table:
    return manifests.conform_results(
        [
            {"image_id": f"img-{n}", "manifest_row": n, "preset": preset, "status": status}
            for n in range(start, stop)
        ]
    )


def _files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_parts_written_one_by_one_make_the_table_a_whole_write_makes(tmp_path: Path) -> None:
    parts = [
        _rows(0, 3),
        _rows(3, 5, preset="print"),
        _rows(5, 8),
        _rows(8, 9, preset=None, status="rejected_row"),
    ]

    with ResultTableWriter(tmp_path / "streamed", dag_run_id="run-1", run_date="2024-05-01") as writer:
        for part in parts:
            writer.write(part)
        streamed = writer.commit()
    whole = write_result_table(
        pa.concat_tables(parts), tmp_path / "whole", dag_run_id="run-1", run_date="2024-05-01"
    )

    assert _files(tmp_path / "streamed") == _files(tmp_path / "whole")
    for root in ("streamed", "whole"):
        back = read_result_tables(tmp_path / root).sort_by("manifest_row")
        assert back["manifest_row"].to_pylist() == list(range(9))
        assert back["preset"].to_pylist() == ["marketplace"] * 3 + ["print"] * 2 + ["marketplace"] * 3 + [
            None
        ]
        assert back["dag_run_id"].null_count == back["recorded_at"].null_count == 0
    marker = json.loads(Path(streamed.commit_marker).read_text())
    assert marker["rows"] == streamed.rows == whole.rows == 9
    assert marker["status_counts"] == {"done": 8, "rejected_row": 1}
    # One row group per write that had rows of the preset: the writer never gathered the parts.
    marketplace = next(f for f in streamed.files if "preset=marketplace" in f)
    assert pq.ParquetFile(marketplace).metadata.num_row_groups == 2
    assert pq.ParquetFile(marketplace).schema_arrow.metadata == {b"leapi.result.version": b"1"}


def test_a_writer_left_without_commit_publishes_nothing(tmp_path: Path) -> None:
    with (
        pytest.raises(RuntimeError, match="a check failed"),
        ResultTableWriter(tmp_path, dag_run_id="run-1", run_date="2024-05-01") as writer,
    ):
        writer.write(_rows(0, 3))
        writer.write(_rows(3, 4, preset="print"))
        raise RuntimeError("a check failed")

    assert _files(tmp_path) == []


def test_a_bad_part_stops_the_write_and_leaves_nothing(tmp_path: Path) -> None:
    with (
        pytest.raises(ValueError, match="unknown status"),
        ResultTableWriter(tmp_path, dag_run_id="run-1", run_date="2024-05-01") as writer,
    ):
        writer.write(_rows(0, 3))
        writer.write(pa.table({"image_id": ["x"], "manifest_row": [3], "status": ["finished"]}))
        writer.commit()

    assert _files(tmp_path) == []


def test_parquet_is_read_in_parts_of_at_most_the_rows_asked(tmp_path: Path) -> None:
    table = _rows(0, 10)
    pq.write_table(table, tmp_path / "t.parquet")
    pq.write_table(table.slice(0, 0), tmp_path / "empty.parquet")

    parts = list(read_parquet_parts(tmp_path / "t.parquet", rows=4))
    empty = list(read_parquet_parts(tmp_path / "empty.parquet", rows=4))

    assert [p.num_rows for p in parts] == [4, 4, 2]
    assert pa.concat_tables(parts).equals(table)
    assert len(empty) == 1 and empty[0].num_rows == 0 and empty[0].schema.names == table.schema.names
