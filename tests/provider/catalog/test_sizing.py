"""Batch sizing and the cost model (:mod:`leapi_provider.catalog.sizing`): the figures docs/catalog.md
quotes for 1k, 100k and 1M images at 120 requests a minute come from here."""

from __future__ import annotations

import pytest

from leapi_provider.catalog.settings import SIZING_REQUESTS_PER_MINUTE, CatalogSettings
from leapi_provider.catalog.sizing import (
    STATUS_READS_PER_PIPELINE,
    TRIGGERER_RATE_SHARE,
    batch_count,
    batch_pace,
    estimate_run,
    triggerer_pace,
)

RATE = {"requests_per_minute": 120, "batch_api_minutes": 10}


@pytest.mark.parametrize(
    ("images", "slots", "expected"),
    [
        (1, 4, 1),
        (24, 4, 1),  # a small manifest is one batch: a batch task costs seconds whatever its size
        (199, 4, 2),
        (200, 4, 2),  # at least min_images_per_batch (100) each ...
        (1000, 4, 8),  # ... and BATCHES_PER_SLOT (2) per slot that runs batches at once
        (1000, 16, 10),
        (20_000, 4, 8),  # 2,000 pipelines need 4,400 requests: 4 batches' API time, fewer than the slots
        (100_000, 4, 19),  # 22,000 requests: 19 batches of at most 10 minutes at 120/min
        (1_000_000, 4, 184),
    ],
)
def test_batch_count_follows_the_cost_model(images: int, slots: int, expected: int) -> None:
    pipelines = -(-images // 10)
    count = batch_count(
        images=images,
        pipelines=pipelines,
        parallel_batches=slots,
        min_images_per_batch=100,
        max_batches=1024,
        **RATE,
    )
    assert count == expected


def test_a_batch_needs_at_most_its_api_time() -> None:
    for images in (50_000, 250_000, 1_000_000, 3_000_000):
        pipelines = images // 10
        batches = batch_count(
            images=images,
            pipelines=pipelines,
            parallel_batches=4,
            min_images_per_batch=100,
            max_batches=4096,
            **RATE,
        )
        requests_per_batch = pipelines / batches * (1 + STATUS_READS_PER_PIPELINE)
        assert requests_per_batch <= 120 * 10 + 1e-6, images


def test_batch_count_never_exceeds_max_batches() -> None:
    sizes = {"parallel_batches": 64, "min_images_per_batch": 10, "max_batches": 5, **RATE}
    assert batch_count(images=10_000, pipelines=1000, **sizes) == 5
    assert batch_count(images=0, pipelines=0, **sizes) == 1


def test_the_cost_model_at_100k_images() -> None:
    estimate = estimate_run(100_000, CatalogSettings())
    assert (estimate.pipelines, estimate.batches) == (10_000, 19)
    assert estimate.submits == 10_000 and estimate.status_reads == 12_000
    assert estimate.api_requests == 22_001 and estimate.requests_per_image <= 0.3
    assert estimate.api_minutes == pytest.approx(22_001 / 120, abs=0.1), "the rate limit bounds the run"
    assert estimate.task_instances == 21 and estimate.result_rows == 100_000
    assert estimate.triggers == estimate.rate_limit_deferrals + estimate.wait_deferrals
    assert estimate.task_starts == 2 + 19 + estimate.triggers


def test_a_declared_rate_is_shared_by_the_running_batches_and_the_triggerer() -> None:
    declared = CatalogSettings(api_requests_per_minute=300, parallel_batches=4)
    assert triggerer_pace(declared) + batch_pace(declared) * 4 == pytest.approx(300), (
        "the whole rate, no more"
    )
    assert triggerer_pace(declared) == pytest.approx(300 * TRIGGERER_RATE_SHARE)
    assert batch_pace(CatalogSettings()) is None and triggerer_pace(CatalogSettings()) is None, "learned"
    assert CatalogSettings().sizing_requests_per_minute == 120 == SIZING_REQUESTS_PER_MINUTE


def test_paced_batches_never_defer_for_the_rate_limit_and_take_their_share_of_time() -> None:
    learned = estimate_run(100_000, CatalogSettings())
    paced = estimate_run(100_000, CatalogSettings(api_requests_per_minute=120))
    assert learned.rate_limit_deferrals > 0, "a learned limit lets a minute's requests go, then defers"
    assert paced.rate_limit_deferrals == 0, "paced, a batch's requests are 2.5 s apart: below defer_after"
    assert paced.batches == learned.batches, "sized by the same rate"
    assert paced.run_seconds > learned.run_seconds, "the triggerer's share is held back from the batches"
