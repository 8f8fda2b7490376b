"""The finalize step: exactly one result row per manifest row, written atomically, plus the run's reports.

Images of a batch whose task failed get ``error`` rows; after writing everything the task then fails
(naming the batches), so the run shows as failed and a re-run resumes it.
"""

from __future__ import annotations

import json
import logging
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from functools import partial
from typing import Any, TypeVar

import pyarrow as pa
import pyarrow.compute as pc

from leapi_provider import manifests
from leapi_provider.catalog.batch import read_submitted
from leapi_provider.catalog.html_report import REPORT_THUMBNAILS, report_thumbnails, write_html_report
from leapi_provider.catalog.plan import status_rows
from leapi_provider.catalog.report import FeedExportWriter, contact_sheet
from leapi_provider.catalog.settings import CatalogSettings
from leapi_provider.catalog.storage import CatalogRun, RunFolder, batch_index_of, storage_path, uri_of
from leapi_provider.catalog.tally import RunTally, first_done_per_preset
from leapi_provider.manifests import ResultStatus

log = logging.getLogger(__name__)

#: Files of the run's folder read at once (each read mostly waits on the object store).
_READERS = 8

#: Rows of the plan's own result rows (rejected, skipped, deferred: all of a catalog that did not change)
#: passed on at a time.
_CARRIED_PART_ROWS = 65_536

_T = TypeVar("_T")


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
    results_root = storage_path(settings.results, settings.aws_conn_id)
    tally = RunTally(picks_per_preset=max(settings.contact_sheet_images, REPORT_THUMBNAILS))
    # (every step after the stream mostly waits on the object store: the independent ones run at once)
    with ThreadPoolExecutor(max_workers=3) as pool, ExitStack() as files:
        credits = pool.submit(_credits_used, folder, plan["batches"])
        table = files.enter_context(
            manifests.ResultTableWriter(
                results_root, dag_run_id=run.dag_run_id, run_date=run.run_date, file_key=run.key
            )
        )
        feed = (
            files.enter_context(FeedExportWriter(settings, folder, run))
            if export_feed and settings.export
            else None
        )
        sinks = [table.write, tally.add] + ([feed.write] if feed else [])
        incomplete = _stream_rows(folder, plan, run, sinks)
        mismatch = tally.mismatch(plan["counts"]["manifest_rows"])
        if mismatch:
            raise AirflowFailException(mismatch)
        sheet = pool.submit(_write_contact_sheet, settings, run, tally, results_root)
        thumbnails = pool.submit(report_thumbnails, settings, tally)
        written = table.commit()
        exported = feed.commit() if feed else []
        summary = tally.summary(credits_used=credits.result())
        sheet_uri = sheet.result()
        report = write_html_report(
            settings, run, tally, summary, contact_sheet_uri=sheet_uri, thumbnails=thumbnails.result()
        )
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


def _stream_rows(
    folder: RunFolder, plan: dict[str, Any], run: CatalogRun, sinks: list[Callable[[pa.Table], None]]
) -> list[int]:
    """Pass the run's result rows to each of ``sinks``, part by part, each part in manifest order: the
    plan's own rows, then each batch's rows, with ``error`` rows for the images of a batch that did not
    complete; returns those batches.

    The batches' files are read a few ahead of the writes, never all at once, and each sink writes in a
    thread of its own, at most a part behind the others: memory stays that of a few batches, whatever the
    size of the catalog, and one sink's work (the feed's CSV) overlaps the others' and the reads.
    """
    with ExitStack() as lanes_open:
        lanes = [lanes_open.enter_context(ThreadPoolExecutor(max_workers=1)) for _ in sinks]
        writing: list[Future[None] | None] = [None] * len(sinks)

        def emit(part: pa.Table) -> None:
            part = manifests.conform_results(part).sort_by("manifest_row")
            for lane_index, (lane, sink) in enumerate(zip(lanes, sinks, strict=True)):
                previous = writing[lane_index]
                if previous is not None:
                    previous.result()
                writing[lane_index] = lane.submit(sink, part)

        for carried in manifests.read_parquet_parts(folder.carried, rows=_CARRIED_PART_ROWS):
            emit(carried)
        incomplete: list[int] = []
        indexes = [batch_index_of(uri) for uri in plan["batches"]]
        for index, (expected, got) in zip(
            indexes, _read_ahead(partial(_batch_files, folder), indexes), strict=True
        ):
            emit(got)
            missing = expected.filter(pc.invert(pc.is_in(expected["manifest_row"], got["manifest_row"])))
            if missing.num_rows:
                incomplete.append(index)
                error = f"batch {index} did not complete (a task of it failed); re-run the DAG run"
                emit(status_rows(missing, ResultStatus.ERROR, error=error, run=run))
        for last in writing:
            if last is not None:
                last.result()
    return incomplete


def _read_ahead(read: Callable[[int], _T], indexes: list[int]) -> Iterator[_T]:
    """``read(index)`` for each index, in order, up to :data:`_READERS` of them in flight at once."""
    with ThreadPoolExecutor(max_workers=_READERS) as pool:
        pending: deque[Future[_T]] = deque()
        for index in indexes:
            pending.append(pool.submit(read, index))
            if len(pending) >= _READERS:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _batch_files(folder: RunFolder, index: int) -> tuple[pa.Table, pa.Table]:
    """A batch's images (as planned) and its result rows so far."""
    results_path = folder.results(index)
    got = manifests.read_parquet(results_path) if results_path.exists() else manifests.empty_results()
    return manifests.read_parquet(folder.batch(index)), got


def _write_contact_sheet(
    settings: CatalogSettings, run: CatalogRun, tally: RunTally, results_root: Any
) -> str | None:
    sheet = contact_sheet(settings, first_done_per_preset(tally.picks(), settings.contact_sheet_images))
    if sheet is not None:
        target = results_root / f"run_date={run.run_date}" / f"_contact_sheet-{run.key}.png"
        return manifests.write_bytes_atomic(sheet, target)
    if not tally.by_status.get(ResultStatus.DONE.value):
        # (say so: a reader must not take an earlier run's sheet for this one's)
        log.info("This run enhanced no image, so no new contact sheet was written")
    return None


def _credits_used(folder: RunFolder, batch_uris: Iterable[str]) -> int:
    def paid(uri: str) -> int:
        records = read_submitted(folder.submitted(batch_index_of(uri)))
        if records is None:
            return 0
        return int(pc.sum(pc.cast(records["newly_submitted"], pa.int64())).as_py() or 0)

    with ThreadPoolExecutor(max_workers=_READERS) as pool:
        return sum(pool.map(paid, batch_uris))
