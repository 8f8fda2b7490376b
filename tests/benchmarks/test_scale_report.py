"""The scale bench's model column (:mod:`tests.bench.scale_report`): the figures come from the catalog's cost
model itself (``sizing.estimate_run``), and a run is judged against them quantity by quantity."""

from __future__ import annotations

from typing import Any

import pytest

from leapi_provider.catalog.settings import CatalogSettings
from leapi_provider.catalog.sizing import RESUMES_PER_BATCH, estimate_run
from tests.bench import scale_measure as m
from tests.bench import scale_model as sm
from tests.bench import scale_report as r


def test_the_model_column_is_the_cost_model() -> None:
    model = sm.expected_from_model(
        20_000, params={"urls_per_pipeline": 10}, rate_limited=False, engine_images_per_s=50.0
    )
    estimate = estimate_run(
        20_000, CatalogSettings(urls_per_pipeline=10), rate_limited=False, engine_images_per_s=50.0
    )
    assert model["posts"] == estimate.submits == 2_000
    assert model["status_reads"] == estimate.status_reads
    assert model["downloads"] == 20_000 and model["usage_reads"] == 1
    assert model["task_instance_rows"] == estimate.batches + 2
    # No rate limit: only the partial-completion deferrals (a batch's 250 pipelines take 200 s, 75 of them
    # submitting, 10 waiting in the worker: 3 deferrals of a quarter each); the engine bounds the run.
    assert model["triggers"] == estimate.wait_deferrals == 3 * estimate.batches
    assert (
        estimate.rate_limit_deferrals == 0 and estimate.wait_deferrals <= RESUMES_PER_BATCH * estimate.batches
    )
    assert model["run_s"] >= 20_000 / 50.0
    fast = sm.expected_from_model(
        20_000, params={"urls_per_pipeline": 10}, rate_limited=False, engine_images_per_s=5000
    )
    assert fast["triggers"] == 0, "a batch whose pipelines end while it submits never defers"
    assert set(model) <= set(sm.MODEL_KEYS)


def test_a_rate_limit_sizes_the_batches_and_bounds_the_run() -> None:
    params = {"urls_per_pipeline": 10, "api_requests_per_minute": 300, "quota_guard": "off"}
    limited = sm.expected_from_model(5_000, params=params, rate_limited=True)
    estimate = estimate_run(
        5_000, CatalogSettings(urls_per_pipeline=10, api_requests_per_minute=300, quota_guard="off")
    )
    assert limited["triggers"] == estimate.triggers and limited["usage_reads"] == 0
    # 500 submits and 600 reads at 300 a minute: 3.7 minutes at least.
    assert limited["run_s"] >= (500 + 600) / 300 * 60


def _run_like(model: dict[str, float], **changes: float) -> dict[str, Any]:
    """A DAG run's facts (the keys the report reads) that did what ``model`` says, but for ``changes``."""
    got = {k: float(v) for k, v in model.items()} | changes
    images = int(got["downloads"])
    return {
        "images": images,
        "dag_s": got["run_s"],
        "starts": int(got["task_starts"]),
        "deferrals": int(got["triggers"]),
        "slot_s": got["worker_slot_s"],
        "plan_s": 5.0,
        "task_instances": int(got["task_instance_rows"]),
        "requests": {
            m.POST_PIPELINE: int(got["posts"]),
            m.GET_PIPELINE: int(got["status_reads"]),
            m.GET_USAGE: int(got["usage_reads"]),
            m.OTHER: 0,
            m.GET_TMP: images,
        },
        "accepted_posts": int(got["posts"]),
        "responses_429": 0,
        "rate_limit_waits": [0, 0.0],
        "metadata": {
            "task_instance": int(got["task_instance_rows"]),
            "xcom": int(got["xcom_rows"]),
            "log": 99,
        },
        "result_table": {
            "files": 1,
            "rows": images,
            "bytes": int(got["result_table_bytes"]),
            "by_status": {},
        },
        "pss_tasks": [[2**28, "task"]],
        "pss_triggerer": 2**27,
        "pss_airflow_total": 2**30,
        "max_per_minute": 10,
        "max_per_minute_all": 20,
    }


@pytest.fixture
def model() -> dict[str, float]:
    return sm.expected_from_model(
        2_000, params={"urls_per_pipeline": 10}, rate_limited=False, engine_images_per_s=20.0
    )


def test_a_run_that_did_what_the_model_says_holds_everywhere(model: dict[str, float]) -> None:
    checks = sm.model_checks(sm.measured_for_model(_run_like(model)), model)
    assert set(checks) == set(sm.MODEL_TOLERANCE) and all(checks.values())
    table = "\n".join(r._model_table(_run_like(model), model))
    assert f"holds for {len(sm.MODEL_TOLERANCE)} of {len(sm.MODEL_TOLERANCE)} quantities." in table
    assert "**off**" not in table


@pytest.mark.parametrize(
    ("key", "factor", "holds"),
    [
        ("posts", 1.001, False),  # (one submit more than the plan's pipelines: a resubmission)
        ("xcom_rows", 1.5, False),
        ("status_reads", 1.2, True),
        ("status_reads", 1.3, False),
        ("triggers", 0.6, True),
        ("triggers", 0.4, False),
        ("run_s", 1.4, True),
        ("run_s", 0.9, False),  # (faster than the model's lower bound: the model is wrong)
        ("run_s", 1.6, False),
    ],
)
def test_each_quantity_is_judged_by_its_tolerance(
    model: dict[str, float], key: str, factor: float, holds: bool
) -> None:
    run = _run_like(model, **{key: model[key] * factor + (1 if key == "posts" else 0)})
    checks = sm.model_checks(sm.measured_for_model(run), model)
    assert checks[key] is holds
    assert all(ok for other, ok in checks.items() if other != key)
    table = "\n".join(r._model_table(run, model))
    assert ("; off: " + key in table) is not holds
