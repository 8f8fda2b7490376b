"""finalize_run streams the run's rows: one row per manifest row, the feed export, the failed batches named,
and nothing published when the rows do not match the manifest (a local run folder; the DAG runs of
tests/integration/dags cover it on moto)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from airflow.sdk.exceptions import AirflowFailException

from leapi_provider import manifests
from leapi_provider.catalog import finalize
from leapi_provider.catalog.finalize import finalize_run
from leapi_provider.catalog.settings import CatalogSettings
from leapi_provider.catalog.storage import CatalogRun, RunFolder, uri_of

BATCHES = 3
ROWS_PER_BATCH = 5
CARRIED = 4  # manifest rows 0-3: skipped as unchanged by the plan


def _result(row: int, status: str, **columns: object) -> dict[str, object]:
    return {
        "image_id": f"sku-{row}",
        "manifest_row": row,
        "preset": "marketplace",
        "status": status,
        "output_uri": f"file:///images/sku-{row}.jpg",
        "output_sha256": f"{row:064x}",
        **columns,
    }


def _run_folder(tmp_path: Path, *, drop: dict[int, int] | None = None, extra: list[int] | None = None):
    """A run's folder as the plan and the batches leave it; ``drop`` leaves out rows of a batch's results,
    ``extra`` adds result rows to batch 0."""
    settings = CatalogSettings(
        manifest="unused",
        results=str(tmp_path / "results"),
        images=str(tmp_path / "images"),
        export=str(tmp_path / "export"),
        contact_sheet_images=0,
    )
    run = CatalogRun("catalog", "manual__1", "2026-12-04", "manual__1-key")
    folder = RunFolder(settings, run)
    carried = [_result(row, "skipped_unchanged") for row in range(CARRIED)]
    manifests.write_parquet_atomic(manifests.conform_results(carried), folder.carried)
    batch_uris = []
    for index in range(BATCHES):
        rows = np.arange(ROWS_PER_BATCH) + CARRIED + index * ROWS_PER_BATCH
        manifests.write_parquet_atomic(pa.table({"manifest_row": rows}), folder.batch(index))
        batch_uris.append(uri_of(folder.batch(index)))
        done = list(rows[: ROWS_PER_BATCH - (drop or {}).get(index, 0)])[::-1]  # (in finishing order)
        done += extra or [] if index == 0 else []
        manifests.write_parquet_atomic(
            manifests.conform_results([_result(int(row), "done") for row in done]), folder.results(index)
        )
        record = pa.table({"manifest_row": rows, "newly_submitted": [True] * len(rows)})
        manifests.write_parquet_atomic(record, folder.submitted(index) / "part-00000.parquet")
    counts = {"manifest_rows": CARRIED + BATCHES * ROWS_PER_BATCH}
    manifests.write_json_atomic({"batches": batch_uris, "counts": counts}, folder.plan)
    return settings, run


def _published(root: Path) -> list[str]:
    return sorted(
        p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and "_runs" not in p.parts
    )


def test_finalize_writes_one_row_per_manifest_row_and_the_feed(tmp_path: Path) -> None:
    settings, run = _run_folder(tmp_path)

    result = finalize_run(settings, run, export_feed=True)

    table = manifests.read_result_tables(settings.results)
    assert sorted(table["manifest_row"].to_pylist()) == list(range(19))
    assert result["summary"]["by_status"] == {"done": 15, "skipped_unchanged": 4}
    assert result["summary"]["credits_used"] == 15
    # Each part in manifest order: the plan's rows, then each batch's (written in finishing order).
    assert pq.read_table(result["result_files"][0])["manifest_row"].to_pylist() == list(range(19))
    feed = list(csv.DictReader(io.StringIO((tmp_path / "export" / "latest" / "feed.csv").read_text())))
    assert [row["image_id"] for row in feed] == [f"sku-{row}" for row in range(19)]
    assert pq.read_table(tmp_path / "export" / "latest" / "feed.parquet").num_rows == 19
    assert (tmp_path / "export" / "run_date=2026-12-04" / "feed-manual__1-key.csv").read_text() == (
        tmp_path / "export" / "latest" / "feed.csv"
    ).read_text()
    assert not [name for name in _published(tmp_path) if name.rsplit("/", 1)[-1].startswith(".")]


def test_a_batch_that_did_not_complete_gets_error_rows_and_fails_the_task(tmp_path: Path) -> None:
    settings, run = _run_folder(tmp_path, drop={1: 2})

    with pytest.raises(AirflowFailException, match=r"1 batch\(es\) did not complete \(\[1\]\)"):
        finalize_run(settings, run, export_feed=True)

    table = manifests.read_result_tables(settings.results)
    errors = table.filter(pc.equal(table["status"], "error"))
    assert sorted(errors["manifest_row"].to_pylist()) == [12, 13]
    assert set(errors["error"].to_pylist()) == {
        "batch 1 did not complete (a task of it failed); re-run the DAG run"
    }
    assert table.num_rows == 19


def test_rows_that_do_not_match_the_manifest_publish_nothing(tmp_path: Path) -> None:
    settings, run = _run_folder(tmp_path, extra=[2])  # manifest row 2 is also among the plan's own rows

    with pytest.raises(AirflowFailException, match=r"20 rows for 19 manifest rows \(1 duplicated\)"):
        finalize_run(settings, run, export_feed=True)

    assert _published(tmp_path / "results") == []
    assert not (tmp_path / "export").exists() or _published(tmp_path / "export") == []


def test_batch_files_are_read_a_few_ahead_not_all_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(finalize, "_READERS", 3)
    in_flight, most = 0, 0
    consumed: list[int] = []

    def read(index: int) -> int:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight - len(consumed))
        return index

    consumed.extend(finalize._read_ahead(read, list(range(10))))

    assert consumed == list(range(10))
    assert most <= 3
