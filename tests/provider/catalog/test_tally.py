"""RunTally: what finalize keeps of the rows it streams equals what the whole table would tell."""

from __future__ import annotations

import itertools
import random

import pyarrow as pa
import pyarrow.compute as pc

from leapi_provider import manifests
from leapi_provider.catalog.tally import EXAMPLES_PER_REASON, RunTally, first_done_per_preset


def _table(rows: int, *, seed: int = 7) -> pa.Table:
    shuffle = random.Random(seed)
    records = []
    for n in range(rows):
        status = shuffle.choice(["done", "done", "done", "error", "skipped_unchanged", "rejected_row"])
        preset = None if status == "rejected_row" else shuffle.choice(["marketplace", "print", "realestate"])
        records.append(
            {
                "image_id": f"img-{shuffle.randrange(10**6):06d}-{n}",
                "manifest_row": n,
                "preset": preset,
                "status": status,
                "output_uri": f"s3://b/{n}.jpg" if status in ("done", "skipped_unchanged") else None,
                "error": f"reason {n % 3}" if status in ("error", "rejected_row") else None,
            }
        )
    return manifests.conform_results(records)


def _tally_in_parts(table: pa.Table, *, cuts: list[int], picks: int) -> RunTally:
    tally = RunTally(picks_per_preset=picks)
    edges = [0, *cuts, table.num_rows]
    for start, stop in itertools.pairwise(edges):
        tally.add(table.slice(start, stop - start))
    return tally


def test_the_tally_of_parts_is_the_tally_of_the_whole() -> None:
    table = _table(500)
    whole = _tally_in_parts(table, cuts=[], picks=4)
    parts = _tally_in_parts(table, cuts=[1, 2, 50, 51, 300], picks=4)

    for tally in (whole, parts):
        assert tally.rows == 500
        assert tally.by_status == {
            status: sum(1 for s in table["status"].to_pylist() if s == status)
            for status in sorted(set(table["status"].to_pylist()))
        }
        # The first 4 ``done`` rows with an output of each preset, by image id: what a whole-table sort picks.
        assert tally.picks().equals(first_done_per_preset(table, 4))
        assert tally.mismatch(500) is None
    assert parts.summary(credits_used=9) == whole.summary(credits_used=9)
    assert parts.picks()["preset"].to_pylist() == sorted(parts.picks()["preset"].to_pylist())
    assert set(parts.picks()["status"].to_pylist()) == {"done"}


def test_errors_are_counted_by_reason_with_the_first_image_ids() -> None:
    table = _table(300)
    tally = _tally_in_parts(table, cuts=[10, 100], picks=1)

    failed = table.filter(pc.is_valid(table["error"])).to_pylist()
    ranked = tally.ranked_errors()
    assert [reason for reason, _ in ranked] == sorted(
        {row["error"] for row in failed}, key=lambda r: (-sum(row["error"] == r for row in failed), r)
    )
    for reason, found in ranked:
        ids = [row["image_id"] for row in failed if row["error"] == reason]
        assert found.count == len(ids)
        assert found.examples == ids[:EXAMPLES_PER_REASON]


def test_summary_keeps_rows_without_a_preset() -> None:
    table = manifests.conform_results(
        [
            {
                "image_id": "a",
                "manifest_row": 0,
                "preset": None,
                "status": "rejected_row",
                "error": "bad url",
            },
            {"image_id": "b", "manifest_row": 1, "preset": "print", "status": "done"},
        ]
    )
    tally = _tally_in_parts(table, cuts=[1], picks=2)

    assert tally.summary(credits_used=1) == {
        "rows": 2,
        "by_status": {"done": 1, "rejected_row": 1},
        "by_status_and_preset": [["done", "print", 1], ["rejected_row", None, 1]],
        "credits_used": 1,
    }
    assert tally.picks().num_rows == 0  # (no output_uri: nothing to show)


def test_a_missing_or_doubled_manifest_row_is_a_mismatch() -> None:
    table = _table(20)
    doubled = _tally_in_parts(pa.concat_tables([table, table.slice(5, 1)]), cuts=[20], picks=1)
    missing = _tally_in_parts(table.slice(1), cuts=[], picks=1)

    assert (
        doubled.mismatch(20)
        == "result rows do not match the manifest: 21 rows for 20 manifest rows (1 duplicated)"
    )
    assert (
        missing.mismatch(20)
        == "result rows do not match the manifest: 19 rows for 20 manifest rows (0 duplicated)"
    )
    assert _tally_in_parts(table, cuts=[3], picks=1).mismatch(20) is None
