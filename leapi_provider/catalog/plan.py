"""The plan step: validate the manifest, drop unchanged images, check credits, cut the rest into batches.

:func:`plan_run` runs those steps in order (:func:`validate_step`, :func:`incremental_step`,
:func:`credit_step`, :func:`write_plan`) and writes everything it decides to the run's folder; XCom carries
only the batch files' URIs. Batch sizing is :func:`leapi_provider.catalog.sizing.batch_count`.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from leapi_provider import manifests
from leapi_provider.catalog.batch import read_submitted
from leapi_provider.catalog.fingerprints import DetectionPolicy, source_fingerprints
from leapi_provider.catalog.settings import CatalogSettings
from leapi_provider.catalog.sizing import batch_count
from leapi_provider.catalog.storage import (
    CatalogRun,
    RunFolder,
    batch_index_of,
    storage_path,
    uri_of,
)
from leapi_provider.manifests import ResultStatus

log = logging.getLogger(__name__)


#: What a ``skipped_unchanged`` row carries forward from the image's last ``done`` row.
_CARRIED_FORWARD = (
    "pipeline_id",
    "input_width",
    "input_height",
    "input_format",
    "input_mps",
    "input_bytes",
    "output_width",
    "output_height",
    "output_format",
    "output_mps",
    "output_bytes",
    "output_uri",
    "output_sha256",
    "submitted_at",
    "started_at",
    "finished_at",
)
#: What change detection compares with the image's last ``done`` row.
_COMPARED = ("source_url", "operation_hash", "source_fingerprint")


def _skipped_rows(candidates: pa.Table, previous: pa.Table, run: CatalogRun) -> pa.Table:
    """``skipped_unchanged`` result rows for ``candidates``, carrying forward the output columns of
    ``previous`` (the same images' last ``done`` rows, row for row)."""
    rows = candidates.drop_columns([name for name in _CARRIED_FORWARD if name in candidates.column_names])
    for name in _CARRIED_FORWARD:
        rows = rows.append_column(name, previous[name])
    return status_rows(rows, ResultStatus.SKIPPED_UNCHANGED, run=run)


def status_rows(
    rows: pa.Table, status: ResultStatus, *, error: str | None = None, run: CatalogRun
) -> pa.Table:
    """Result rows with one ``status`` for plan-like ``rows`` (their other columns kept; ``error`` replaces
    theirs when given)."""
    n = rows.num_rows
    constants: dict[str, str | None] = {
        "status": status.value,
        "dag_run_id": run.dag_run_id,
        "run_key": run.key,
        "run_date": run.run_date,
    }
    if error is not None or "error" not in rows.column_names:
        constants["error"] = error
    table = rows.drop_columns([name for name in constants if name in rows.column_names])
    for name, value in constants.items():
        table = table.append_column(name, pa.repeat(pa.scalar(value, pa.string()), n))
    return manifests.conform_results(table)


def _rejects_rows(rejects: pa.Table) -> pa.Table:
    """The rejects table as result-like rows (short preset name where known, the reason as ``error``)."""
    return manifests.rejects_as_results(rejects, dag_run_id="", run_date="")


def _plain(table: pa.Table) -> pa.Table:
    """Dictionary columns decoded (joins and concatenation want plain types)."""
    return table.cast(
        pa.schema(
            [
                pa.field(f.name, f.type.value_type) if pa.types.is_dictionary(f.type) else f
                for f in table.schema
            ]
        )
    )


#: What to do about an unreadable usage answer (the message of a plan that fails for it).
_UNREADABLE_USAGE_HINT = (
    'the quota guard cannot check this run, so nothing was submitted. Set the param quota_guard="off" to '
    "run without it (max_credits still caps what the run may spend)"
)


def read_remaining_credits(settings: CatalogSettings) -> tuple[int | None, dict[str, Any]]:
    """The account's remaining credits from ``/v1/me/usage/`` (parsed by :class:`leapi.models.Usage`, its
    one parser), and the usage facts to record; ``(None, ...)`` when ``quota_guard="off"`` or when the
    answer says explicitly that the account has no quota (:attr:`leapi.models.Usage.unlimited`).

    :raises AirflowFailException: the usage answer is unreadable or has no remaining figure, and the guard
        is on: no spending goes unguarded silently.
    """
    from airflow.sdk.exceptions import AirflowFailException

    from leapi.errors import LeapiHTTPError, LeapiResponseError
    from leapi_provider.hooks.leapi import LeapiHook

    if settings.quota_guard == "off":
        log.warning("quota_guard is off: the account's credits are not checked before this run spends them")
        return None, {"credits_remaining": None, "quota_guard": "off"}
    with LeapiHook(settings.leapi_conn_id) as hook:
        try:
            usage = hook.get_usage()
        except (LeapiResponseError, LeapiHTTPError) as exc:
            # (a body that is not JSON is retried by the client first, as a proxy's page would be)
            raise AirflowFailException(
                f"LEAPI's usage answer could not be read ({exc}); {_UNREADABLE_USAGE_HINT}"
            ) from exc
    remaining = usage.credits_remaining
    if remaining is None and usage.unlimited:
        log.info(
            "LEAPI reports no monthly quota for this account (used: %s): no credit limit to check", usage.used
        )
        return None, {"credits_remaining": None, "quota": None, "used": usage.used}
    if remaining is None:
        fields = sorted(usage.model_fields_set)
        raise AirflowFailException(
            f"LEAPI's usage answer (GET /v1/me/usage/) has no remaining-credits figure the client can read "
            f"(fields: {', '.join(fields) or 'none'}); {_UNREADABLE_USAGE_HINT}"
        )
    return remaining, {"credits_remaining": remaining, "quota": usage.quota, "used": usage.used}


def credits_allowed(needed: int, remaining: int | None, *, reserve: int, on_shortfall: str) -> int:
    """How many of ``needed`` credits may be spent now (``remaining`` ``None``: the guard is off).

    :raises AirflowFailException: not enough credits and ``on_shortfall == "fail"``.
    """
    from airflow.sdk.exceptions import AirflowFailException

    if remaining is None:
        return needed
    available = max(remaining - reserve, 0)
    if needed <= available:
        return needed
    if on_shortfall == "fail":
        raise AirflowFailException(
            f"This run needs {needed} credits but the LEAPI account has {remaining} left"
            + (f" ({reserve} reserved)" if reserve else "")
            + "; nothing was submitted. Raise the quota, shrink the manifest, or set on_quota_shortfall="
            "process_what_fits to enhance what fits and mark the rest deferred_quota."
        )
    log.warning(
        "Only %d of the %d credits this run needs are available: the rest is deferred", available, needed
    )
    return available


@dataclass
class PlanState:
    """What the plan steps decide, step by step: rows still to submit, and result rows already decided."""

    run: CatalogRun
    valid: pa.Table
    total_rows: int
    rejected: int
    carried: list[pa.Table] = field(default_factory=list)
    counts: dict[str, Any] = field(default_factory=dict)

    def carry(self, rows: pa.Table, status: ResultStatus, *, error: str | None = None) -> None:
        """Decide ``rows`` now (they are not submitted): they get result rows of ``status``."""
        if rows.num_rows:
            self.carried.append(status_rows(rows, status, error=error, run=self.run))


@contextlib.contextmanager
def plan_phase(name: str) -> Iterator[list[str]]:
    """Log how long the plan's phase ``name`` took, with the details appended to the yielded list (the
    record's ``extra``: ``plan_phase`` and ``plan_phase_seconds``)."""
    details: list[str] = []
    started = time.perf_counter()
    yield details
    seconds = time.perf_counter() - started
    log.info(
        "Plan phase %s: %.2f s%s",
        name,
        seconds,
        f" ({'; '.join(details)})" if details else "",
        extra={"plan_phase": name, "plan_phase_seconds": seconds},
    )


def plan_run(settings: CatalogSettings, run: CatalogRun, *, max_map_length: int) -> dict[str, Any]:
    """Validate, diff (incremental), check the quota, plan batches; write it all to the run's folder.

    A re-run of the same run (same run key) reuses the plan its earlier attempt wrote, checking credits
    only for the images that attempt did not get accepted.

    :param settings: the run's settings.
    :param run: the run's identity.
    :param max_map_length: Airflow's ``[core] max_map_length`` (batches are mapped tasks).
    :returns: ``{"run_dir", "batches": [URI, ...], "counts": {...}}`` (small: URIs and numbers).
    :raises ManifestError: unreadable manifest or no valid row.
    """
    folder = RunFolder(settings, run)
    if folder.plan.exists() and not settings.dry_run:
        return _resume_plan(settings, folder)
    with plan_phase("read and validate"):
        state = validate_step(settings, run, folder)
    if settings.incremental:
        incremental_step(settings, state)
    with plan_phase("credits"):
        credit_step(settings, state)
    with plan_phase("write batches"):
        planned = write_plan(settings, state, folder, max_batches=min(settings.max_batches, max_map_length))
    if settings.dry_run:
        return _dry_run_preview(state, folder, planned)
    return planned


def _dry_run_preview(state: PlanState, folder: RunFolder, planned: dict[str, Any]) -> dict[str, Any]:
    """Write the dry run's preview table; its plan maps no batch (nothing is submitted)."""
    preview = pa.concat_tables(
        [
            manifests.conform_results(t)
            for t in [*state.carried, status_rows(state.valid, ResultStatus.PLANNED, run=state.run)]
        ]
    ).sort_by("manifest_row")
    manifests.write_parquet_atomic(preview, folder.preview)
    log.info(
        "Dry run: %d image(s) would be submitted in %d pipeline(s) and %d batch(es), costing %d credit(s); "
        "nothing was submitted. Plan: %s; preview table: %s",
        state.valid.num_rows,
        planned["counts"]["pipelines"],
        planned["counts"]["batches"],
        state.valid.num_rows,
        uri_of(folder.plan),
        uri_of(folder.preview),
    )
    return planned | {"batches": [], "preview": uri_of(folder.preview)}


def validate_step(settings: CatalogSettings, run: CatalogRun, folder: RunFolder) -> PlanState:
    """Read and validate the manifest: bad rows are carried as ``rejected_row``; attributes set aside."""
    manifest_location = storage_path(settings.manifest, settings.aws_conn_id)
    validation = manifests.validate_manifest(
        manifests.read_manifest(manifest_location), preset_defaults=settings.preset_defaults
    )
    validation.require_valid_rows(settings.manifest)
    log.info(
        "Manifest %s: %d rows, %d valid, rejects %s",
        settings.manifest,
        validation.total_rows,
        validation.valid.num_rows,
        validation.reject_counts,
    )
    valid = _plain(validation.valid)
    if "attributes" in valid.column_names:
        manifests.write_parquet_atomic(
            valid.select(["manifest_row", "image_id", "attributes"]), folder.attributes
        )
        valid = valid.drop_columns(["attributes"])
    n = valid.num_rows
    valid = valid.append_column("source_fingerprint", pa.nulls(n, pa.string()))
    valid = valid.append_column("input_bytes", pa.nulls(n, pa.int64()))
    state = PlanState(
        run=run, valid=valid, total_rows=validation.total_rows, rejected=validation.rejects.num_rows
    )
    state.carried.append(status_rows(_rejects_rows(validation.rejects), ResultStatus.REJECTED_ROW, run=run))
    state.counts.update(skipped_unchanged=0, source_gone=0)
    return state


def incremental_step(settings: CatalogSettings, state: PlanState) -> None:
    """Fingerprint the sources; carry gone sources as ``error`` and unchanged ones as ``skipped_unchanged``."""
    urls = state.valid["source_url"].to_pylist()
    with plan_phase("fingerprint") as details:
        found = source_fingerprints(
            urls,
            mode=settings.change_detection,
            aws_conn_id=settings.aws_conn_id,
            policy=DetectionPolicy(per_host=settings.change_detection_per_host),
        )
        details.append(found.stats.summary())
    with plan_phase("compare with previous results"):
        for name, values in (
            ("source_fingerprint", pa.array([found[url].fingerprint for url in urls], pa.string())),
            ("input_bytes", pa.array([found[url].content_length for url in urls], pa.int64())),
        ):
            state.valid = state.valid.set_column(state.valid.schema.get_field_index(name), name, values)
        gone = {url: f.error or "" for url, f in found.items() if f.gone}
        unreadable = [f.error for f in found.values() if f.fingerprint is None and not f.gone]
        del found, urls  # (a million sources' fingerprints: not kept through the comparison)
        if unreadable:
            log.warning(
                "%d source(s) could not be fingerprinted: they are re-enhanced (the first: %s)",
                len(unreadable),
                unreadable[0],
            )
        _carry_gone_sources(state, gone)
        _carry_unchanged(settings, state)


def _carry_gone_sources(state: PlanState, gone: Mapping[str, str]) -> None:
    """Sources that answered 404/410 (``gone``: URL -> the answer) are not submitted: the failure is
    certain and would cost a credit."""
    if not gone:
        return
    is_gone = pc.is_in(state.valid["source_url"], pa.array(list(gone), pa.string()))
    rows = state.valid.filter(is_gone)
    reasons = [
        f"source answered {gone[u]} at change detection; not submitted"
        for u in rows["source_url"].to_pylist()
    ]
    state.carry(rows.append_column("error", pa.array(reasons, pa.string())), ResultStatus.ERROR)
    state.counts["source_gone"] = rows.num_rows
    state.valid = state.valid.filter(pc.invert(is_gone))


def _carry_unchanged(settings: CatalogSettings, state: PlanState) -> None:
    """Images whose latest ``done`` row has the same source URL, operation hash and fingerprint.

    The previous rows are matched to this run's by ``image_id`` (unique in both) with a hash lookup
    that keeps manifest order, and only the columns compared or carried forward are read.
    """
    done_before = manifests.latest_results(
        manifests.read_result_tables(
            storage_path(settings.results, settings.aws_conn_id),
            # This run's own rows (from an earlier attempt of it) are not "before".
            filter=(pc.field("status") == ResultStatus.DONE.value)
            & (pc.field("run_key").is_null() | (pc.field("run_key") != state.run.key)),
            columns=["image_id", "recorded_at", *_COMPARED, *_CARRIED_FORWARD],
        )
    )
    position = pc.index_in(state.valid["image_id"], value_set=done_before["image_id"].combine_chunks())
    previous = done_before.take(position)  # (row for row with state.valid; null where never done)
    unchanged = pc.fill_null(
        pc.and_(
            pc.and_(
                pc.equal(state.valid["source_url"], previous["source_url"]),
                pc.equal(state.valid["operation_hash"], previous["operation_hash"]),
            ),
            pc.equal(state.valid["source_fingerprint"], previous["source_fingerprint"]),
        ),
        False,
    )
    skipped = state.valid.filter(unchanged)
    state.counts["skipped_unchanged"] = skipped.num_rows
    if skipped.num_rows:
        state.carried.append(_skipped_rows(skipped, previous.filter(unchanged), state.run))
    state.valid = state.valid.filter(pc.invert(unchanged))


def credit_step(settings: CatalogSettings, state: PlanState) -> None:
    """Apply the run's credit cap, then check the account's credits, before spending any.

    In manifest order: images beyond ``max_credits`` are carried as ``deferred_cap``, then those beyond the
    account's remaining credits as ``deferred_quota`` (or the plan fails, see ``on_quota_shortfall``).
    """
    state.valid = state.valid.sort_by("manifest_row")
    cap = settings.max_credits
    capped = state.valid.slice(cap) if cap is not None else state.valid.slice(state.valid.num_rows)
    if capped.num_rows:
        log.warning(
            "max_credits=%d: %d of the %d image(s) to enhance are not submitted this run (deferred_cap)",
            cap,
            capped.num_rows,
            state.valid.num_rows,
        )
        state.carry(
            capped, ResultStatus.DEFERRED_CAP, error=f"not submitted: the run's max_credits={cap} was reached"
        )
        state.valid = state.valid.slice(0, cap)
    state.counts["deferred_cap"] = capped.num_rows
    remaining, usage = read_remaining_credits(settings)
    allowed = credits_allowed(
        state.valid.num_rows,
        remaining,
        reserve=settings.quota_reserve,
        on_shortfall=settings.on_quota_shortfall,
    )
    deferred = state.valid.slice(allowed)
    state.carry(deferred, ResultStatus.DEFERRED_QUOTA, error=f"not submitted: {remaining} credits were left")
    state.counts["deferred_quota"] = deferred.num_rows
    state.counts.update(usage, credits_needed=allowed)
    state.valid = state.valid.slice(0, allowed)


def write_plan(
    settings: CatalogSettings, state: PlanState, folder: RunFolder, *, max_batches: int
) -> dict[str, Any]:
    """Cut the rows to submit into batches (:func:`batch_count`) and write the batch files, the carried
    rows and ``plan.json`` (last: its presence means the plan is complete)."""
    batches = batch_count(
        images=state.valid.num_rows,
        pipelines=_pipeline_count(state.valid, settings.urls_per_pipeline),
        parallel_batches=settings.parallel_batches,
        min_images_per_batch=settings.min_images_per_batch,
        max_batches=max(1, max_batches),
        requests_per_minute=settings.sizing_requests_per_minute,
        batch_api_minutes=settings.batch_api_minutes,
    )
    plan = manifests.plan_batches(
        state.valid, urls_per_pipeline=settings.urls_per_pipeline, max_batches=batches
    )

    def write_batch(item: tuple[int, pa.Table]) -> str:
        index, rows = item
        manifests.write_parquet_atomic(_plain(rows), folder.batch(index))
        return uri_of(folder.batch(index))

    # (small files on object stores are latency bound: written in parallel)
    with ThreadPoolExecutor(max_workers=8) as pool:
        batch_uris = list(pool.map(write_batch, plan.batches()))
    manifests.write_parquet_atomic(pa.concat_tables(state.carried), folder.carried)
    counts = {
        "manifest_rows": state.total_rows,
        "rejected": state.rejected,
        **state.counts,
        "to_submit": state.valid.num_rows,
        "operations": plan.num_operations,
        "pipelines": plan.num_pipelines,
        "batches": plan.num_batches,
        "pipelines_per_batch": plan.pipelines_per_batch,
    }
    run = state.run
    manifests.write_json_atomic(
        {
            "dag_run_id": run.dag_run_id,
            "run_key": run.key,
            "run_date": run.run_date,
            "batches": batch_uris,
            "counts": counts,
        },
        folder.plan,
    )
    log.info("Plan: %s", counts)
    return {"run_dir": uri_of(folder.root), "batches": batch_uris, "counts": counts}


def _pipeline_count(rows: pa.Table, urls_per_pipeline: int) -> int:
    """Pipelines ``rows`` make: each operation's images, ``urls_per_pipeline`` at a time."""
    if not rows.num_rows:
        return 0
    counts = pc.value_counts(rows["operation_hash"]).field("counts").to_numpy()
    return int((-(-counts // urls_per_pipeline)).sum())


def _resume_plan(settings: CatalogSettings, folder: RunFolder) -> dict[str, Any]:
    """The plan of an earlier attempt of this run, kept as it was so that its batches (and the submissions
    recorded for them) stay valid; only images not yet accepted need credits now.
    """
    plan = manifests.read_json(folder.plan)
    pending = 0
    for uri in plan["batches"]:
        index = batch_index_of(uri)
        planned = manifests.read_parquet(folder.batch(index)).num_rows
        recorded = read_submitted(folder.submitted(index))
        pending += planned - (recorded.num_rows if recorded is not None else 0)
    log.info(
        "Resuming the plan of an earlier attempt of this run (%d batches); %d image(s) not submitted yet",
        len(plan["batches"]),
        pending,
    )
    if pending:
        remaining, _ = read_remaining_credits(settings)
        allowed = credits_allowed(
            pending, remaining, reserve=settings.quota_reserve, on_shortfall=settings.on_quota_shortfall
        )
        if allowed < pending:
            log.warning("%d image(s) may be refused by the API for lack of credits", pending - allowed)
    return {"run_dir": uri_of(folder.root), "batches": plan["batches"], "counts": plan["counts"]}
