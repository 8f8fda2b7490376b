"""A batch's submission record (:class:`leapi_provider.catalog.batch.SubmissionRecord`): every accepted
pipeline is saved at once, by rewriting only the part it falls in, and read back whole, in submission order,
by the next execution."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from airflow.sdk import ObjectStoragePath

from leapi_provider.catalog.batch import (
    RECORD_PART_PIPELINES,
    SUBMITTED_SCHEMA,
    SubmissionRecord,
    pipeline_ids_of,
    read_submitted,
)


def _records(pipeline_id: int | None, first_row: int, images: int = 10) -> list[dict[str, Any]]:
    record = dict.fromkeys(SUBMITTED_SCHEMA.names)
    return [
        record | {"manifest_row": first_row + i, "pipeline_id": pipeline_id, "result_index": i}
        for i in range(images)
    ]


@pytest.fixture(params=["local", "s3"])
def folder(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStoragePath:
    """A record's folder on a local disk and in a bucket (moto's S3 server: one PUT per save there)."""
    if request.param == "local":
        return ObjectStoragePath(f"file://{tmp_path}/submitted/batch-00000")
    bucket, conn_id = request.getfixturevalue("s3_bucket"), request.getfixturevalue("aws_conn")
    return ObjectStoragePath(f"s3://{bucket}/run/submitted/batch-00000", conn_id=conn_id)


@pytest.fixture
def written_rows(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Rows each save wrote (the record's cost)."""
    sizes: list[int] = []
    save = SubmissionRecord._save_part

    def counting(record: SubmissionRecord) -> None:
        sizes.append(len(record._part_records))
        save(record)

    monkeypatch.setattr(SubmissionRecord, "_save_part", counting)
    return sizes


def test_each_submit_rewrites_only_its_part(folder: ObjectStoragePath, written_rows: list[int]) -> None:
    pipelines = 2 * RECORD_PART_PIPELINES + 7
    record = SubmissionRecord(folder)
    for pipeline in range(pipelines):
        record.add(_records(1000 + pipeline, 10 * pipeline))

    assert len(written_rows) == pipelines, "every accepted pipeline is saved at once"
    assert max(written_rows) == 10 * RECORD_PART_PIPELINES, "no save rewrites more than one part"
    # (rewriting the whole record per submit would write 10 * n(n+1)/2 rows)
    assert sum(written_rows) < 10 * pipelines * (RECORD_PART_PIPELINES + 1) / 2 + 10 * pipelines
    assert sorted(p.name for p in folder.iterdir()) == [
        "part-00000.parquet",
        "part-00001.parquet",
        "part-00002.parquet",
    ]
    table = read_submitted(folder)
    assert table is not None and table["manifest_row"].to_pylist() == list(range(10 * pipelines))


def test_a_later_execution_reads_everything_and_adds_parts_of_its_own(folder: ObjectStoragePath) -> None:
    first = SubmissionRecord(folder)
    for pipeline in range(3):
        first.add(_records(pipeline, 10 * pipeline))
    first.add(_records(None, 30, images=2))  # (a REJECTED group: recorded, no pipeline)

    second = SubmissionRecord(folder)
    assert second.existed and len(second.by_row) == 32
    assert pipeline_ids_of(list(second.by_row.values())) == [0, 1, 2]
    second.add(_records(7, 40))

    third = SubmissionRecord(folder)
    assert list(third.by_row) == [*range(32), *range(40, 50)], "submission order across executions"
    assert pipeline_ids_of(list(third.by_row.values())) == [0, 1, 2, 7]
    assert len(list(folder.iterdir())) == 2, "the second execution wrote a part of its own"


def test_an_empty_batch_leaves_an_empty_record(folder: ObjectStoragePath) -> None:
    assert read_submitted(folder) is None
    record = SubmissionRecord(folder)
    assert not record.existed
    record.mark_empty()
    table = read_submitted(folder)
    assert table is not None and table.num_rows == 0
    assert SubmissionRecord(folder).existed
