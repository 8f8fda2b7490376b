"""Manifests: reading, validation into valid rows and rejects, planning, and atomic result tables."""

from __future__ import annotations

import json
import random
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from leapi.models import MAX_OUTPUT_SIDE, MarketplacePreset
from leapi_provider import manifests
from leapi_provider.manifests import (
    MANIFEST_SCHEMA,
    RESULT_SCHEMA,
    ManifestError,
    RejectCode,
    ResultStatus,
    latest_results,
    plan_batches,
    read_manifest,
    read_result_tables,
    validate_manifest,
    write_result_table,
)


def _manifest(rows: list[dict], schema: pa.Schema | None = None) -> pa.Table:
    """A manifest table from row dicts; a column any row sets exists (null elsewhere)."""
    names = list(dict.fromkeys(name for row in rows for name in row))
    return pa.Table.from_pylist([{n: row.get(n) for n in names} for row in rows], schema=schema)


def _row(image_id: str, url: str | None = None, preset: str | None = "marketplace", **options) -> dict:
    return {
        "image_id": image_id,
        "source_url": url or f"https://cdn.example.com/{image_id}.jpg",
        "preset": preset,
        **options,
    }


def _rejects_by_row(validation: manifests.ManifestValidation) -> dict[int, tuple[str, str]]:
    return {r["manifest_row"]: (r["reject_code"], r["reason"]) for r in validation.rejects.to_pylist()}


# ---------------------------------------------------------------------------------------------- schema


def test_published_manifest_schema_round_trips_through_validation(tmp_path: Path) -> None:
    rows = [
        _row(
            "a",
            width=1200,
            height=900,
            restoration_level=4,
            lightai_intensity=0.5,
            toneai_intensity=0.4,
            image_format="JPEG",
            quality=80,
            attributes={"sku": "A-1"},
        ),
        _row("b", preset="print", dpi=300),
    ]
    for row in rows:
        for name in MANIFEST_SCHEMA.names:
            row.setdefault(name, None)
    path = tmp_path / "m.parquet"
    pq.write_table(_manifest(rows, MANIFEST_SCHEMA), path)

    validation = validate_manifest(read_manifest(path))

    assert validation.rejects.num_rows == 0
    assert validation.valid["image_id"].to_pylist() == ["a", "b"]
    first = json.loads(validation.valid["operation_json"][0].as_py())
    assert first == {
        "op": "preset/marketplace",
        "width": 1200,
        "height": 900,
        "restoration_level": 4,
        "lightai_intensity": 0.5,
        "toneai_intensity": 0.4,
        "image_format": "JPEG",
        "quality": 80,
    }
    assert validation.valid["attributes"].to_pylist()[0] == [("sku", "A-1")]
    assert set(manifests.REQUIRED_COLUMNS) == {"image_id", "source_url", "preset"}
    assert not MANIFEST_SCHEMA.field("image_id").nullable


# ---------------------------------------------------------------------------------------------- reading


def test_reads_one_file_a_folder_and_a_glob_in_path_order(tmp_path: Path) -> None:
    folder = tmp_path / "manifest"
    (folder / "part=2").mkdir(parents=True)
    pq.write_table(_manifest([_row("a"), _row("b")]), folder / "001.parquet")
    pq.write_table(_manifest([_row("c")]), folder / "part=2" / "002.parquet")
    # Files a dataset writer leaves behind are not manifest rows.
    pq.write_table(_manifest([_row("hidden")]), folder / ".tmp.parquet")
    pq.write_table(_manifest([_row("meta")]), folder / "_meta.parquet")

    as_folder = read_manifest(folder)
    as_glob = read_manifest(f"{folder}/*.parquet")
    as_file = read_manifest(folder / "001.parquet")
    as_url = read_manifest(f"file://{folder}")

    assert as_folder.table["image_id"].to_pylist() == ["a", "b", "c"]
    assert as_url.table["image_id"].to_pylist() == ["a", "b", "c"]
    assert as_glob.table["image_id"].to_pylist() == ["a", "b"]
    assert as_file.table["image_id"].to_pylist() == ["a", "b"]
    assert as_folder.file_of_row.cast(pa.string()).to_pylist() == [
        str(folder / "001.parquet"),
        str(folder / "001.parquet"),
        str(folder / "part=2" / "002.parquet"),
    ]


def test_reads_an_object_storage_path(tmp_path: Path) -> None:
    from airflow.sdk import ObjectStoragePath

    pq.write_table(_manifest([_row("a")]), tmp_path / "m.parquet")
    table = read_manifest(ObjectStoragePath(f"file://{tmp_path}/m.parquet")).table
    assert table["image_id"].to_pylist() == ["a"]


def test_files_with_different_integer_widths_are_unified(tmp_path: Path) -> None:
    pq.write_table(
        _manifest([_row("a", width=10)], pa.schema([*[*MANIFEST_SCHEMA][:3], pa.field("width", pa.int32())])),
        tmp_path / "1.parquet",
    )
    pq.write_table(_manifest([_row("b", width=3_000_000_000)]), tmp_path / "2.parquet")  # int64

    validation = validate_manifest(read_manifest(tmp_path))

    assert validation.valid["image_id"].to_pylist() == ["a"]
    assert _rejects_by_row(validation)[1][0] == RejectCode.INVALID_OPTION


def test_a_file_that_is_not_parquet_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "m.parquet").write_text("image_id,source_url\na,http://x/a.jpg\n")
    with pytest.raises(ManifestError, match=r"m\.parquet is not a readable Parquet file"):
        read_manifest(tmp_path / "m.parquet")


@pytest.mark.parametrize("kind", ["missing", "empty folder", "glob without match"])
def test_nothing_to_read_is_a_clear_error(tmp_path: Path, kind: str) -> None:
    location = {
        "missing": tmp_path / "nope.parquet",
        "empty folder": tmp_path,
        "glob without match": tmp_path / "*.parquet",
    }[kind]
    with pytest.raises(ManifestError, match=r"no such file|no Parquet file"):
        read_manifest(location)


def test_a_missing_required_column_is_a_clear_error(tmp_path: Path) -> None:
    pq.write_table(
        pa.table({"image_id": ["a"], "url": ["http://x/a.jpg"], "preset": ["print"]}), tmp_path / "m.parquet"
    )
    with pytest.raises(
        ManifestError, match=r"no column 'source_url'.*found: \['image_id', 'url', 'preset'\]"
    ):
        read_manifest(tmp_path / "m.parquet")


# ---------------------------------------------------------------------------------------------- validation


def test_s3_sources_are_accepted_and_other_bucket_schemes_rejected() -> None:
    """``s3://bucket/key`` is presigned at submit; a scheme no provider presigns is refused up front."""
    validation = validate_manifest(
        _manifest(
            [
                _row("in-bucket", url="s3://private-catalog/photos/a b.jpg"),
                _row("upper-scheme", url="S3://private-catalog/b.jpg"),
                _row("bucket-only", url="s3://private-catalog"),
                _row("bucket-slash", url="s3://private-catalog/"),
                _row("gcs", url="gs://private-catalog/c.jpg"),
            ]
        )
    )

    assert validation.valid["image_id"].to_pylist() == ["in-bucket", "upper-scheme"]
    assert validation.valid["source_url"].to_pylist()[0] == "s3://private-catalog/photos/a b.jpg"
    assert {row: code for row, (code, _) in _rejects_by_row(validation).items()} == {
        2: "invalid_source_url",
        3: "invalid_source_url",
        4: "invalid_source_url",
    }
    assert _rejects_by_row(validation)[4][1] == (
        "source_url is not an http(s) or s3:// URL: gs://private-catalog/c.jpg"
    )


def test_each_kind_of_bad_row_is_rejected_with_its_reason() -> None:
    table = _manifest(
        [
            _row("ok-1", width=1200),
            _row("no-url", url=""),
            _row("ftp", url="ftp://example.com/a.jpg"),
            _row("spaces", url="http://exa mple.com/a.jpg"),
            _row("bad-preset", preset="instagram"),
            _row("no-preset", preset=None),
            _row("too-wide", width=50_000),
            _row("dpi-on-marketplace", dpi=300),
            _row("bad-format", image_format="GIF"),
            _row("bad-intensity", lightai_intensity=1.5),
            {"image_id": None, "source_url": "https://cdn.example.com/x.jpg", "preset": "print"},
            _row("ok-2", preset="print", dpi=300),
        ]
    )
    no_url = pc.fill_null(pc.equal(table["image_id"], "no-url"), False)
    table = table.set_column(1, "source_url", pc.if_else(no_url, None, table["source_url"]))

    validation = validate_manifest(table)
    rejects = _rejects_by_row(validation)

    assert validation.valid["image_id"].to_pylist() == ["ok-1", "ok-2"]
    assert rejects == {
        1: ("missing_source_url", "missing source_url"),
        2: ("invalid_source_url", "source_url is not an http(s) or s3:// URL: ftp://example.com/a.jpg"),
        3: ("invalid_source_url", "source_url is not an http(s) or s3:// URL: http://exa mple.com/a.jpg"),
        4: ("unknown_preset", "unknown preset 'instagram' (expected one of marketplace, print, realestate)"),
        5: ("missing_preset", "missing preset"),
        6: ("invalid_option", "width: Input should be less than or equal to 40000 (got 50000)"),
        7: ("invalid_option", "dpi is not an option of this preset"),
        8: ("invalid_option", "image_format: Input should be 'JPEG' or 'PNG' (got 'GIF')"),
        9: ("invalid_option", "lightai_intensity: Input should be less than or equal to 1 (got 1.5)"),
        10: ("missing_image_id", "missing image_id"),
    }
    assert validation.reject_counts == {
        "missing_source_url": 1,
        "invalid_source_url": 2,
        "unknown_preset": 1,
        "missing_preset": 1,
        "invalid_option": 4,
        "missing_image_id": 1,
    }
    assert validation.rejects["image_id"].to_pylist()[:2] == ["no-url", "ftp"]


def test_ranges_come_from_the_models() -> None:
    """The validator holds no range of its own: whatever the model accepts is valid, and nothing else."""
    le = MAX_OUTPUT_SIDE
    validation = validate_manifest(_manifest([_row("edge", width=le), _row("over", width=le + 1)]))
    assert validation.valid["image_id"].to_pylist() == ["edge"]
    MarketplacePreset(width=le)
    with pytest.raises(ValueError):
        MarketplacePreset(width=le + 1)


def test_a_row_failing_several_checks_lists_every_reason_and_the_first_code() -> None:
    validation = validate_manifest(_manifest([_row("x", url="mailto:a@b", preset="nope", width=-1)]))
    code, reason = _rejects_by_row(validation)[0]
    assert code == "invalid_source_url"
    assert reason == (
        "source_url is not an http(s) or s3:// URL: mailto:a@b; "
        "unknown preset 'nope' (expected one of marketplace, print, realestate)"
    )


def test_wrong_types_are_rejected_per_row_and_numeric_text_is_accepted() -> None:
    table = pa.table(
        {
            "image_id": [1, 2, 3, 4],  # integer ids are used as their text
            "source_url": ["http://x/1.jpg", "http://x/2.jpg", "http://x/3.jpg", "http://x/4.jpg"],
            "preset": ["marketplace"] * 4,
            "width": ["1200", "abc", None, "12.5"],  # text: parsed by the model
            "height": [900.0, 600.0, float("nan"), 700.5],  # NaN is "not set"
            "quality": pa.array([True, None, None, None], pa.bool_()),  # no number
        }
    )

    validation = validate_manifest(table)
    rejects = _rejects_by_row(validation)

    assert validation.valid["image_id"].to_pylist() == ["3"]
    assert json.loads(validation.valid["operation_json"][0].as_py()) == {"op": "preset/marketplace"}
    assert rejects[0] == ("wrong_type", "quality must be a number (the column is bool)")
    assert rejects[1] == (
        "invalid_option",
        "width: Input should be a valid integer, unable to parse string as an integer (got 'abc')",
    )
    assert rejects[3][0] == "invalid_option"
    assert "width: Input should be a valid integer" in rejects[3][1]
    assert (
        "height: Input should be a valid integer, got a number with a fractional part (got 700.5)"
        in rejects[3][1]
    )


def test_a_url_column_of_the_wrong_type_rejects_its_rows_not_the_run() -> None:
    table = pa.table({"image_id": ["a", "b"], "source_url": [17, None], "preset": ["print", "print"]})
    validation = validate_manifest(table)
    assert _rejects_by_row(validation) == {
        0: ("wrong_type", "source_url must be a string (the column is int64)"),
        1: ("missing_source_url", "missing source_url"),
    }


def test_nulls_everywhere() -> None:
    table = pa.table(
        {
            "image_id": pa.array([None, None], pa.string()),
            "source_url": pa.array([None, "http://x/a.jpg"], pa.string()),
            "preset": pa.array([None, None], pa.string()),
            "width": pa.array([None, None], pa.int32()),
        }
    )
    validation = validate_manifest(table)
    assert validation.rejects["reason"].to_pylist() == [
        "missing image_id; missing source_url; missing preset",
        "missing image_id; missing preset",
    ]
    with pytest.raises(ManifestError, match=r"none of the 2 manifest rows is valid \(2 x missing_image_id\)"):
        validation.require_valid_rows()


def test_duplicate_ids_keep_the_first_valid_occurrence() -> None:
    validation = validate_manifest(
        _manifest(
            [
                _row("a", url="not-a-url"),  # broken: does not claim the id
                _row("a"),
                _row("b"),
                _row("a", width=800),
                _row("b"),
            ]
        )
    )
    assert validation.valid["manifest_row"].to_pylist() == [1, 2]
    assert _rejects_by_row(validation) == {
        0: ("invalid_source_url", "source_url is not an http(s) or s3:// URL: not-a-url"),
        3: ("duplicate_image_id", "duplicate image_id (kept manifest row 1)"),
        4: ("duplicate_image_id", "duplicate image_id (kept manifest row 2)"),
    }


def test_an_empty_manifest_fails_with_a_clear_message(tmp_path: Path) -> None:
    pq.write_table(MANIFEST_SCHEMA.empty_table(), tmp_path / "m.parquet")
    validation = validate_manifest(read_manifest(tmp_path / "m.parquet"))
    assert validation.valid.num_rows == 0 and validation.rejects.num_rows == 0
    with pytest.raises(ManifestError, match="the manifest has no rows"):
        validation.require_valid_rows(tmp_path / "m.parquet")


def test_preset_spellings_and_operation_spellings_share_one_hash() -> None:
    validation = validate_manifest(
        _manifest(
            [
                _row("a", preset="marketplace", width=1200, image_format="jpg", toneai_intensity=0.5),
                _row(
                    "b",
                    preset=" Preset/Marketplace ",
                    width=1200.0,
                    image_format="JPEG",
                    toneai_intensity=0.5,
                ),
                _row("c", preset="MARKETPLACE", width=1201, image_format="JPEG", toneai_intensity=0.5),
            ],
        )
    )
    hashes = validation.valid["operation_hash"].to_pylist()
    assert hashes[0] == hashes[1] != hashes[2]
    assert validation.valid["preset"].to_pylist() == ["marketplace"] * 3
    canonical = '{"image_format":"JPEG","op":"preset/marketplace","toneai_intensity":0.5,"width":1200}'
    assert validation.valid["operation_json"][0].as_py() == canonical
    assert hashes[0] == manifests.operation_hash(canonical)


def test_preset_defaults_are_overlaid_by_rows_and_validated_up_front() -> None:
    defaults = {"marketplace": {"width": 1600, "quality": 80}, "print": {"dpi": 300}}
    validation = validate_manifest(
        _manifest([_row("a"), _row("b", quality=95), _row("c", preset="print")]), preset_defaults=defaults
    )
    ops = [json.loads(t) for t in validation.valid["operation_json"].to_pylist()]
    assert ops == [
        {"op": "preset/marketplace", "width": 1600, "quality": 80},
        {"op": "preset/marketplace", "width": 1600, "quality": 95},
        {"op": "preset/print", "dpi": 300},
    ]
    with pytest.raises(ValueError, match="preset defaults for 'marketplace': dpi is not an option"):
        validate_manifest(_manifest([_row("a")]), preset_defaults={"marketplace": {"dpi": 300}})
    with pytest.raises(ValueError, match="unknown preset 'portrait'"):
        validate_manifest(_manifest([_row("a")]), preset_defaults={"portrait": {}})


# ---------------------------------------------------------------------------------------------- planning


def _valid_rows(n: int, presets: tuple[str, ...] = ("marketplace", "print"), seed: int = 0) -> pa.Table:
    rng = random.Random(seed)
    rows = [_row(f"id-{i}", preset=rng.choice(presets), width=rng.choice([800, 1200])) for i in range(n)]
    return validate_manifest(_manifest(rows)).valid


@pytest.mark.parametrize(
    ("n", "per_pipeline", "max_batches"), [(1, 10, 1), (95, 10, 1000), (95, 10, 3), (5000, 7, 64)]
)
def test_plan_groups_by_operation_and_fits_the_map_length(
    n: int, per_pipeline: int, max_batches: int
) -> None:
    valid = _valid_rows(n)
    plan = plan_batches(valid, urls_per_pipeline=per_pipeline, max_batches=max_batches)
    rows = plan.table.select(["image_id", "operation_hash", "pipeline_index", "batch_index"]).to_pylist()

    assert len(rows) == n and {r["image_id"] for r in rows} == set(valid["image_id"].to_pylist())
    pipelines: dict[int, list[dict]] = {}
    for row in rows:
        pipelines.setdefault(row["pipeline_index"], []).append(row)
    assert all(len({r["operation_hash"] for r in members}) == 1 for members in pipelines.values())
    assert max(len(members) for members in pipelines.values()) <= per_pipeline
    assert plan.num_pipelines == len(pipelines)
    # Fewest pipelines possible: each operation's rows are cut only at the cap.
    per_operation = Counter(r["operation_hash"] for r in rows)
    assert plan.num_pipelines == sum(-(-count // per_pipeline) for count in per_operation.values())
    batches = [r["batch_index"] for r in rows]
    assert plan.num_batches == len(set(batches)) <= max_batches
    pipelines_per_batch = Counter(b for b, _ in {(r["batch_index"], r["pipeline_index"]) for r in rows})
    assert max(pipelines_per_batch.values()) <= plan.pipelines_per_batch
    assert batches == sorted(batches)
    assert sum(len(rows) for _, rows in plan.batches()) == n
    assert plan.batch(plan.num_batches - 1).num_rows > 0


def test_plan_does_not_depend_on_row_order() -> None:
    valid = _valid_rows(200)
    shuffled = valid.take(pa.array(np.random.default_rng(1).permutation(valid.num_rows)))
    shuffled = shuffled.set_column(0, "manifest_row", valid["manifest_row"])  # same rows, new positions
    a = plan_batches(valid, urls_per_pipeline=6, max_batches=10)
    b = plan_batches(valid, urls_per_pipeline=6, max_batches=10)
    assert a.table.equals(b.table)
    c = plan_batches(shuffled, urls_per_pipeline=6, max_batches=10)
    assert sorted(pc.unique(c.table["operation_hash"].cast(pa.string())).to_pylist()) == sorted(
        pc.unique(a.table["operation_hash"].cast(pa.string())).to_pylist()
    )
    assert c.num_pipelines == a.num_pipelines and c.num_batches == a.num_batches


def test_plan_of_nothing_and_bad_arguments() -> None:
    plan = plan_batches(_valid_rows(3).slice(0, 0), urls_per_pipeline=10, max_batches=5)
    assert (plan.num_batches, plan.num_pipelines, plan.table.num_rows) == (0, 0, 0)
    assert list(plan.batches()) == []
    with pytest.raises(ValueError, match="urls_per_pipeline"):
        plan_batches(_valid_rows(3), urls_per_pipeline=0, max_batches=5)
    with pytest.raises(ValueError, match="max_batches"):
        plan_batches(_valid_rows(3), urls_per_pipeline=10, max_batches=0)


# ---------------------------------------------------------------------------------------------- result tables


def _results(ids: list[str], status: str = "done", preset: str | None = "marketplace", **columns) -> pa.Table:
    rows = [
        {
            "image_id": i,
            "manifest_row": n,
            "preset": preset,
            "status": status,
            "operation_hash": "h",
            "finished_at": datetime(2024, 5, 1, tzinfo=UTC) + timedelta(minutes=n),
            **columns,
        }
        for n, i in enumerate(ids)
    ]
    return manifests.conform_results(rows)


def test_result_table_is_partitioned_and_reads_back(tmp_path: Path) -> None:
    root = tmp_path / "results"
    results = pa.concat_tables(
        [
            _results(["a", "b"]),
            _results(["c"], preset="print"),
            _results(["d"], status="rejected_row", preset=None),
        ]
    )

    written = write_result_table(
        results, root, dag_run_id="manual__2024-05-01T00:00:00+00:00", run_date=date(2024, 5, 1)
    )

    assert sorted(Path(f).relative_to(root).parent.as_posix() for f in written.files) == [
        "run_date=2024-05-01/preset=__unknown__",
        "run_date=2024-05-01/preset=marketplace",
        "run_date=2024-05-01/preset=print",
    ]
    marker = json.loads(Path(written.commit_marker).read_text())
    assert marker["rows"] == 4 and marker["status_counts"] == {"done": 3, "rejected_row": 1}
    assert sorted(marker["files"]) == sorted(written.files)
    back = read_result_tables(root)
    assert back.schema.names == RESULT_SCHEMA.names
    assert sorted(zip(back["image_id"].to_pylist(), back["preset"].to_pylist(), strict=True)) == [
        ("a", "marketplace"),
        ("b", "marketplace"),
        ("c", "print"),
        ("d", None),
    ]
    assert set(back["run_date"].to_pylist()) == {"2024-05-01"}
    assert back["recorded_at"].null_count == 0
    # Partition columns live in the path, not inside the files.
    assert "preset" not in pq.read_schema(written.files[0]).names


def test_a_retried_write_replaces_its_own_files(tmp_path: Path) -> None:
    write_result_table(
        _results(["a", "b"], dag_run_id="run-1"), tmp_path, dag_run_id="run-1", run_date="2024-05-01"
    )
    write_result_table(
        _results(["a", "b"], dag_run_id="run-1"), tmp_path, dag_run_id="run-1", run_date="2024-05-01"
    )
    write_result_table(
        _results(["a"], dag_run_id="run-2"), tmp_path, dag_run_id="run-2", run_date="2024-05-01"
    )
    back = read_result_tables(tmp_path)
    assert sorted(back["dag_run_id"].to_pylist()) == ["run-1", "run-1", "run-2"]
    assert len(list((tmp_path / "_commits").rglob("*.json"))) == 2


def test_a_failed_write_leaves_nothing_visible(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_write = pq.ParquetWriter.write_table

    def write_half_then_fail(writer, table, *args, **kwargs):
        real_write(writer, table.slice(0, 1), *args, **kwargs)
        raise OSError("disk full")

    monkeypatch.setattr(pq.ParquetWriter, "write_table", write_half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        write_result_table(_results(["a", "b"]), tmp_path, dag_run_id="run-1", run_date="2024-05-01")
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []
    assert read_result_tables(tmp_path).num_rows == 0


def test_result_rows_must_have_a_known_status() -> None:
    with pytest.raises(ValueError, match="unknown status"):
        manifests.conform_results([{"image_id": "a", "status": "finished"}])
    assert {s.value for s in ResultStatus} == {
        "done",
        "error",
        "rejected_row",
        "skipped_unchanged",
        "deferred_quota",
        "deferred_cap",
        "planned",
    }


def test_latest_results_per_image(tmp_path: Path) -> None:
    old = _results(["a", "b"], output_uri="s3://b/old")
    write_result_table(old, tmp_path, dag_run_id="run-1", run_date="2024-05-01")
    newer = pa.concat_tables([_results(["a"], output_uri="s3://b/new"), _results(["b"], status="error")])
    write_result_table(newer, tmp_path, dag_run_id="run-2", run_date="2024-05-02")

    everything = read_result_tables(tmp_path)
    latest_done = latest_results(everything, statuses=[ResultStatus.DONE])
    latest_any = latest_results(everything)

    assert dict(
        zip(latest_done["image_id"].to_pylist(), latest_done["output_uri"].to_pylist(), strict=True)
    ) == {
        "a": "s3://b/new",
        "b": "s3://b/old",
    }
    assert dict(zip(latest_any["image_id"].to_pylist(), latest_any["status"].to_pylist(), strict=True)) == {
        "a": "done",
        "b": "error",
    }


def test_reading_results_that_do_not_exist_yet(tmp_path: Path) -> None:
    assert read_result_tables(tmp_path / "none").num_rows == 0


def test_rejects_become_result_rows() -> None:
    validation = validate_manifest(
        _manifest([_row("a"), _row("b", preset="Print", url="nope"), _row("c", preset="x")])
    )
    rows = manifests.rejects_as_results(validation.rejects, dag_run_id="r", run_date="2024-05-01")
    assert rows["status"].to_pylist() == ["rejected_row", "rejected_row"]
    assert rows["preset"].to_pylist() == ["print", None]
    assert rows["error"].to_pylist()[0] == "source_url is not an http(s) or s3:// URL: nope"


def test_results_on_s3(s3_bucket: str, aws_conn: str) -> None:
    """Manifest in and result table out on S3 through ObjectStoragePath (moto's S3 server)."""
    from airflow.sdk import ObjectStoragePath

    root = ObjectStoragePath(f"s3://{s3_bucket}/", conn_id=aws_conn)
    manifest = root / "manifests" / "m.parquet"
    with manifest.open("wb") as handle:
        pq.write_table(_manifest([_row("a"), _row("b", url="x")]), handle)

    validation = validate_manifest(read_manifest(root / "manifests"))
    assert validation.valid["image_id"].to_pylist() == ["a"]
    assert validation.rejects["source_file"].to_pylist() == [f"s3://{s3_bucket}/manifests/m.parquet"]

    written = write_result_table(_results(["a"]), root / "results", dag_run_id="run-1", run_date="2024-05-01")
    assert written.files == [
        f"s3://{s3_bucket}/results/run_date=2024-05-01/preset=marketplace/part-{manifests.run_key('run-1')}.parquet"
    ]
    keys = sorted(o.key for o in (root / "results").rglob("*") if o.is_file())
    assert not [k for k in keys if "/." in k]  # no temporary object left behind
    assert read_result_tables(root / "results")["image_id"].to_pylist() == ["a"]
