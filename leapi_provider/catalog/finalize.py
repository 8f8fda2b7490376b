"""The finalize step: exactly one result row per manifest row, written atomically, plus the run's reports.

Images of a batch whose task failed get ``error`` rows; after writing everything the task then fails
(naming the batches), so the run shows as failed and a re-run resumes it.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from leapi_provider import manifests
from leapi_provider.catalog.batch import read_submitted
from leapi_provider.catalog.html_report import write_html_report
from leapi_provider.catalog.plan import status_rows
from leapi_provider.catalog.report import contact_sheet, write_feed_export
from leapi_provider.catalog.settings import CatalogSettings
from leapi_provider.catalog.storage import CatalogRun, RunFolder, batch_index_of, storage_path, uri_of
from leapi_provider.manifests import ResultStatus

log = logging.getLogger(__name__)

#: Files of the run's folder read at once (each read mostly waits on the object store).
_READERS = 8


def finalize_run(settings: CatalogSettings, run: CatalogRun, *, export_feed: bool = False) -> dict[str, Any]:
    """Write the run's result table (one row per manifest row), its contact sheet and the feed export.

    Images of a batch whose tasks failed get ``error`` rows; after writing everything the task then fails
    (naming the batches), so the run shows as failed and a re-run resumes it.
    """
    # A failed finalize is not retried: re-running the failed batches (clear the run) is what helps.
    from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

    folder = RunFolder(settings, run)
    if settings.dry_run:
        # (skipped, not succeeded: a dry run writes no result table, so it emits no asset event either)
        raise AirflowSkipException(
            f"dry run: nothing was submitted and no result table was written; the plan and its preview "
            f"table are in {uri_of(folder.root)}"
        )
    if not folder.plan.exists():
        raise AirflowFailException(
            f"the plan of run {run.dag_run_id} is missing ({uri_of(folder.plan)}): the plan task failed"
        )
    plan = manifests.read_json(folder.plan)
    # (every step after the plan mostly waits on storage: the independent ones run at once, the many small
    # record reads beside the batch files' reads rather than beside the large writes)
    with ThreadPoolExecutor(max_workers=3) as pool:
        credits = pool.submit(_credits_used, folder, plan["batches"])
        table, incomplete = _assemble(folder, plan, run)
        results_root = storage_path(settings.results, settings.aws_conn_id)
        written = manifests.write_result_table(
            table, results_root, dag_run_id=run.dag_run_id, run_date=run.run_date, file_key=run.key
        )
        sheet = pool.submit(_write_contact_sheet, settings, run, table, results_root)
        export = (
            pool.submit(write_feed_export, settings, table, folder, run)
            if export_feed and settings.export
            else None
        )
        summary = _summary(table, credits_used=credits.result())
        sheet_uri = sheet.result()
        report = write_html_report(settings, run, table, summary, contact_sheet_uri=sheet_uri)
        exported = export.result() if export else []
    result = {
        "result_files": written.files,
        "commit_marker": written.commit_marker,
        "contact_sheet": sheet_uri,
        "report": report,
        "exports": exported,
        "summary": summary,
    }
    log.info("Catalog run finished: %s", json.dumps(result, default=str))
    if incomplete:
        raise AirflowFailException(
            f"{len(incomplete)} batch(es) did not complete ({incomplete[:10]}); their images are recorded as errors "
            f"in {written.commit_marker}. Clear and re-run this DAG run to resume: accepted pipelines are not "
            "submitted again."
        )
    return result


def _assemble(folder: RunFolder, plan: dict[str, Any], run: CatalogRun) -> tuple[pa.Table, list[int]]:
    """One row per manifest row: the plan's own rows, each batch's rows, ``error`` rows for the images of
    batches that did not complete; and those batches.

    :raises AirflowFailException: the rows do not match the manifest one for one.
    """
    from airflow.sdk.exceptions import AirflowFailException

    parts = [manifests.read_parquet(folder.carried)]
    incomplete: list[int] = []
    indexes = [batch_index_of(uri) for uri in plan["batches"]]
    with ThreadPoolExecutor(max_workers=_READERS) as pool:
        read = list(pool.map(lambda index: _batch_files(folder, index), indexes))
    for index, (expected, got) in zip(indexes, read, strict=True):
        parts.append(got)
        missing = expected.filter(pc.invert(pc.is_in(expected["manifest_row"], got["manifest_row"])))
        if missing.num_rows:
            incomplete.append(index)
            error = f"batch {index} did not complete (a task of it failed); re-run the DAG run"
            parts.append(status_rows(missing, ResultStatus.ERROR, error=error, run=run))
    table = pa.concat_tables([manifests.conform_results(p) for p in parts]).sort_by("manifest_row")
    rows = table["manifest_row"].to_numpy()
    expected_rows = plan["counts"]["manifest_rows"]
    if len(rows) != expected_rows or len(np.unique(rows)) != expected_rows:
        raise AirflowFailException(
            f"result rows do not match the manifest: {len(rows)} rows for {expected_rows} manifest rows "
            f"({len(rows) - len(np.unique(rows))} duplicated)"
        )
    return table, incomplete


def _batch_files(folder: RunFolder, index: int) -> tuple[pa.Table, pa.Table]:
    """A batch's images (as planned) and its result rows so far."""
    results_path = folder.results(index)
    got = manifests.read_parquet(results_path) if results_path.exists() else manifests.empty_results()
    return manifests.read_parquet(folder.batch(index)), got


def _write_contact_sheet(
    settings: CatalogSettings, run: CatalogRun, table: pa.Table, results_root: Any
) -> str | None:
    done = table.filter(pc.equal(table["status"], ResultStatus.DONE.value))
    sheet = contact_sheet(settings, _sheet_candidates(done, settings.contact_sheet_images))
    if sheet is not None:
        target = results_root / f"run_date={run.run_date}" / f"_contact_sheet-{run.key}.png"
        return manifests.write_bytes_atomic(sheet, target)
    if done.num_rows == 0:
        # (say so: a reader must not take an earlier run's sheet for this one's)
        log.info("This run enhanced no image, so no new contact sheet was written")
    return None


def _sheet_candidates(done: pa.Table, count: int) -> pa.Table:
    """The first ``count`` ``done`` rows of each preset by ``image_id``: all the contact sheet may pick
    (it picks fewer, in that order), so that it never turns a catalog's whole table into Python rows."""
    done = done.filter(pc.is_valid(done["output_uri"])).sort_by(
        [("preset", "ascending"), ("image_id", "ascending")]
    )
    presets = pc.unique(done["preset"]).to_pylist()
    return pa.concat_tables(
        [
            done.filter(pc.equal(done["preset"], preset)).slice(0, count)
            for preset in presets
            if preset is not None
        ]
        or [done.slice(0, 0)]
    )


def _summary(table: pa.Table, *, credits_used: int) -> dict[str, Any]:
    pairs = Counter(zip(table["status"].to_pylist(), table["preset"].to_pylist(), strict=True))
    return {
        "rows": table.num_rows,
        "by_status": dict(sorted(Counter(table["status"].to_pylist()).items())),
        "by_status_and_preset": [
            [status, preset, n]
            for (status, preset), n in sorted(pairs.items(), key=lambda i: (i[0][0], i[0][1] or ""))
        ],
        "credits_used": credits_used,
    }


def _credits_used(folder: RunFolder, batch_uris: Iterable[str]) -> int:
    def paid(uri: str) -> int:
        records = read_submitted(folder.submitted(batch_index_of(uri)))
        if records is None:
            return 0
        return int(pc.sum(pc.cast(records["newly_submitted"], pa.int64())).as_py() or 0)

    with ThreadPoolExecutor(max_workers=_READERS) as pool:
        return sum(pool.map(paid, batch_uris))
