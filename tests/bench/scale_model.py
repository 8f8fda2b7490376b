"""The scale bench's model column: :func:`leapi_provider.catalog.sizing.estimate_run` asked about a run
(:func:`expected_from_model`; one source, no formula restated here), the run's own figures under the same
keys (:func:`measured_for_model`), and :func:`model_checks`, which says quantity by quantity whether the run
stayed within :data:`MODEL_TOLERANCE` of the model: the bench is what shows the model of docs/catalog.md
holds.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tests.bench import scale_measure as m

#: What the model is asked for, by key: the report's "model" column (seconds, counts, bytes).
MODEL_KEYS = (
    "run_s",  # the DAG run's wall time
    "posts",  # POST /v1/pipeline
    "status_reads",  # GET /v1/pipeline/{id}
    "usage_reads",  # GET /v1/me/usage/
    "downloads",  # GET /v1/tmp/... (not API requests)
    "task_starts",
    "triggers",
    "worker_slot_s",
    "task_instance_rows",
    "xcom_rows",
    "log_rows",
    "result_table_bytes",
)

#: How far a measured quantity may be from the model's figure, as a fraction of it (``run_s``: the model
#: is a lower bound, so only above it). Counts fixed by the plan must match; what depends on timing (how
#: many rounds, resumes, reads) has room.
MODEL_TOLERANCE: dict[str, float] = {
    "posts": 0.0,
    "usage_reads": 0.0,
    "downloads": 0.0,
    "task_instance_rows": 0.0,
    "xcom_rows": 0.0,
    "status_reads": 0.25,
    "task_starts": 0.5,
    "triggers": 0.5,
    "worker_slot_s": 0.5,
    "result_table_bytes": 0.5,
    "run_s": 0.5,
}


def expected_from_model(
    images: int,
    *,
    params: Mapping[str, Any],
    rate_limited: bool,
    engine_images_per_s: float | None = None,
    submit_s: float | None = None,
) -> dict[str, float]:
    """The batch-size model's figures for a run (keys: :data:`MODEL_KEYS`, ``log_rows`` not modelled).

    :param params: the run's params (as triggered: ``urls_per_pipeline``, ``api_requests_per_minute``,
        ``quota_guard`` ...; the rest at their defaults).
    :param rate_limited: the server enforces the params' ``api_requests_per_minute``.
    :param engine_images_per_s: the server's speed for these images (the fair baseline's images per
        second): what bounds the run's time when no rate limit does, and how long a batch waits.
    :param submit_s: seconds one submit held its batch's worker in this run (``None``: the model's figure).
    """
    from leapi_provider.catalog.settings import CatalogSettings
    from leapi_provider.catalog.sizing import SUBMIT_S, estimate_run

    known = set(CatalogSettings.__dataclass_fields__)
    settings = CatalogSettings(**{k: v for k, v in params.items() if k in known})
    model = estimate_run(
        images,
        settings,
        rate_limited=rate_limited,
        engine_images_per_s=engine_images_per_s,
        submit_s=submit_s or SUBMIT_S,
    )
    return {
        "run_s": model.run_seconds,
        "posts": model.submits,
        "status_reads": model.status_reads,
        "usage_reads": model.usage_reads,
        "downloads": model.downloads,
        "task_starts": model.task_starts,
        "triggers": model.triggers,
        "worker_slot_s": (model.worker_slot_hours + model.transfer_slot_hours) * 3600,
        "task_instance_rows": model.task_instances,
        "xcom_rows": model.xcom_rows,
        "result_table_bytes": model.result_table_mb * 1e6,
    }


def measured_for_model(dag: dict[str, Any]) -> dict[str, float]:
    """The DAG run's figures under :data:`MODEL_KEYS` (those the bench measures)."""
    requests, meta = dag["requests"], dag["metadata"]
    return {
        "run_s": dag["dag_s"],
        "posts": requests[m.POST_PIPELINE],
        "status_reads": requests[m.GET_PIPELINE],
        "usage_reads": requests[m.GET_USAGE],
        "downloads": requests[m.GET_TMP],
        "task_starts": dag["starts"],
        "triggers": dag["deferrals"],
        "worker_slot_s": dag["slot_s"],
        "task_instance_rows": meta.get("task_instance", 0),
        "xcom_rows": meta.get("xcom", 0),
        "log_rows": meta.get("log", 0),
        "result_table_bytes": dag["result_table"]["bytes"],
    }


def model_checks(measured: dict[str, float], model: dict[str, float]) -> dict[str, bool]:
    """Per quantity of :data:`MODEL_TOLERANCE` that both sides have: whether the measured figure is within
    the tolerance of the model's."""
    checks = {}
    for key, tolerance in MODEL_TOLERANCE.items():
        if key not in measured or key not in model:
            continue
        expected, got = model[key], measured[key]
        if key == "run_s":
            checks[key] = expected <= got <= expected * (1 + tolerance)
        else:
            checks[key] = abs(got - expected) <= tolerance * expected + 1e-9
    return checks
