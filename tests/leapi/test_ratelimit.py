"""The account's shared, adaptive submit limiter (:mod:`leapi.ratelimit`) and the rate-limit time budget.

The limiter runs on a fake clock here; the transport tests record sleeps instead of sleeping.
"""

from __future__ import annotations

import json

import httpx
import pytest
import respx

import leapi
from leapi.constants import RATE_LIMIT_REASON
from leapi.ratelimit import SHARED_LIMITERS, AdaptiveRateLimiter

BASE = "https://api.test"
REQUEST = {
    "source": {"http": {"url": "https://img.test/a.jpg"}},
    "operations": [{"op": "preset/marketplace", "width": 100}],
    "sink": {"temp_store": True},
}
REFUSED = {"status": "REJECTED", "reason": RATE_LIMIT_REASON}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def limiter(clock: Clock) -> AdaptiveRateLimiter:
    return AdaptiveRateLimiter(clock=clock, margin_s=0.5, jitter_s=0.0)


def test_unlimited_until_a_refusal_then_paced_by_what_was_accepted_in_the_minute() -> None:
    clock = Clock()
    rates = limiter(clock)
    for _ in range(8):
        booking = rates.book()
        assert booking.wait == 0
        rates.accepted(booking)
        clock.now += 1
    refused = rates.book()
    assert refused.wait == 0, "nothing learned yet"
    rates.refused(refused)
    assert rates.limit == 8
    # The ninth submit (the retry) waits until the second of the last eight sends is a minute old.
    retry = rates.book()
    assert retry.wait == pytest.approx(1001.0 + 60 + 0.5 - clock.now)
    assert retry.wait <= 60.5, "never more than about a minute"


def test_refusals_of_one_burst_decrease_once_and_a_quiet_minute_adds_one() -> None:
    clock = Clock()
    rates = limiter(clock)
    burst = [rates.book() for _ in range(12)]  # parallel submits, all sent before any answer
    for booking in burst[:8]:
        rates.accepted(booking)
    for booking in burst[8:]:
        rates.refused(booking)
    assert rates.limit == 8, "the burst's other refusals were sent before the decision"
    clock.now += 61
    rates.accepted(rates.book())
    assert rates.limit == 9, "additive increase after a minute without refusals"
    clock.now += 1
    rates.refused(rates.book())
    assert rates.limit == 4, "one accepted in the last minute, but one decision at most halves the limit"
    clock.now += 1
    rates.refused(rates.book())
    assert rates.limit == 2, "refused again after that decision: halved again"


def test_probing_past_the_limit_falls_back_to_what_was_accepted() -> None:
    clock = Clock()
    rates = limiter(clock)
    for _ in range(10):
        rates.accepted(rates.book())
    rates.refused(rates.book())
    assert rates.limit == 10
    for _ in range(10):
        clock.now += 6.1
        rates.accepted(rates.book())
    assert rates.limit == 11, "a quiet minute probes one more"
    rates.refused(rates.book())
    assert rates.limit == 10, "the probe was refused: back to the ten a minute that were accepted"


def test_refused_at_the_learned_limit_halves_it() -> None:
    clock = Clock()
    rates = limiter(clock)
    for _ in range(10):
        rates.accepted(rates.book())
    rates.refused(rates.book())
    clock.now += 30
    # Still ten accepted in the window and refused again: the account's limit shrank (or another
    # process took a share), so halve (multiplicative decrease).
    rates.refused(rates.book())
    assert rates.limit == 5


def test_a_resumed_process_refused_at_once_keeps_half_the_rate_it_took_over() -> None:
    """The docs-only scale run's crawl: a batch resumed after a deferral restored 75/min, its first submit
    was refused (the other batches had the minute) with nothing accepted in this process yet, and it
    concluded 1/min for the rest of the run."""
    clock, wall = Clock(), Clock()
    earlier = AdaptiveRateLimiter(clock=clock, wall_clock=wall, margin_s=0.5, jitter_s=0.0)
    for _ in range(75):
        earlier.accepted(earlier.book())
    earlier.refused(earlier.book())
    assert earlier.limit == 75
    snapshot = earlier.snapshot()
    wall.now += 120  # the deferral: nothing of the snapshot's minute is left
    resumed = AdaptiveRateLimiter(clock=Clock(), wall_clock=wall, margin_s=0.5, jitter_s=0.0)
    resumed.restore(snapshot)
    resumed.refused(resumed.book())
    assert resumed.limit == 37


def test_a_declared_pace_spaces_every_request_evenly_from_the_first() -> None:
    clock = Clock()
    rates = limiter(clock)
    rates.pace(30)
    waits = [rates.book().wait for _ in range(5)]
    assert waits == pytest.approx([0, 2, 4, 6, 8]), "two seconds apart, no burst, nothing refused yet"
    clock.now += 100
    assert rates.next_wait() == 0, "an idle gap is not saved up into a burst"
    rates.pace(None)
    assert [rates.book().wait for _ in range(3)] == [0, 0, 0]
    with pytest.raises(ValueError, match="more than 0"):
        rates.pace(0)


def test_one_limiter_per_account_shared_by_sync_and_async_clients() -> None:
    sync = leapi.Client(api_key="k1", base_url=BASE)
    other_key = leapi.Client(api_key="k2", base_url=BASE)
    asynchronous = leapi.AsyncClient(api_key="k1", base_url=BASE + "/v1/pipeline/")
    assert sync.account_limiter is asynchronous.account_limiter
    assert sync.account_limiter is not other_key.account_limiter
    assert SHARED_LIMITERS.for_account(BASE, "k1") is sync.account_limiter
    sync.close()
    other_key.close()


@respx.mock
def test_status_reads_are_booked_and_paced_like_submits(slept) -> None:
    """The API's limiter counts every request it receives: a read refused without a hint teaches the
    shared limiter, and the reads after it wait for their slot in the window like submits do."""
    reads = respx.get(f"{BASE}/v1/pipeline/3")
    processing = httpx.Response(200, json={"pipeline": {"id": 3, "status": "PROCESSING"}})
    reads.side_effect = [processing, processing, httpx.Response(200, json=REFUSED), processing, processing]
    with leapi.Client(api_key="k", base_url=BASE) as client:
        for _ in range(4):
            client.get_pipeline(3)
        assert reads.call_count == 5, "the refused read was retried"
        assert client.account_limiter.limit == 2, "learned from a read: two were accepted in the minute"
        assert sum(1 for d in slept if d >= 59) == 2, "the retry and the read after it waited for a slot"
        assert client.account_limiter.next_wait() > 0


def test_a_snapshot_carries_the_learned_rate_to_another_process() -> None:
    clock, wall = Clock(), Clock()
    wall.now = 1_800_000_000.0
    first = AdaptiveRateLimiter(clock=clock, wall_clock=wall, margin_s=0.5, jitter_s=0.0)
    for _ in range(3):
        first.accepted(first.book())
        clock.now += 1
        wall.now += 1
    first.refused(first.book())
    assert first.limit == 3 and first.next_wait() > 55
    snapshot = first.snapshot()
    assert json.loads(json.dumps(snapshot)) == snapshot

    # Another process, another monotonic clock, 5 s later on the wall clock.
    later, later_wall = Clock(), Clock()
    later.now, later_wall.now = 50.0, wall.now + 5
    second = AdaptiveRateLimiter(clock=later, wall_clock=later_wall, margin_s=0.5, jitter_s=0.0)
    assert second.next_wait() == 0
    second.restore(snapshot)
    assert second.limit == 3
    assert second.next_wait() == pytest.approx(first.next_wait() - 5, abs=0.01), "the same slot, in its time"
    later.now += 61
    assert second.next_wait() == 0, "a minute later the window is free again"


@respx.mock
def test_refusals_without_hints_are_retried_past_max_retries_and_waits_are_counted(slept) -> None:
    route = respx.post(f"{BASE}/v1/pipeline")
    accepted = {"status": "ACCEPTED", "pipeline": {"id": 7, "status": "PROCESSING"}}
    route.side_effect = [httpx.Response(200, json=REFUSED)] * 3 + [httpx.Response(200, json=accepted)]
    with leapi.Client(api_key="k", base_url=BASE, max_retries=0) as client:
        assert client.submit(REQUEST).id == 7
        assert route.call_count == 4, "max_retries=0 does not limit free rate-limit refusals"
        # First refusal: learned limit 1 (nothing accepted yet), so each retry waits for a minute slot.
        assert client.account_limiter.limit == 1
        assert sum(1 for d in slept if d >= 59) == 3
        assert client.rate_limit_waited_s == pytest.approx(sum(slept))


@respx.mock
def test_rate_limit_refusals_do_not_spend_the_transport_retries(slept) -> None:
    route = respx.get(f"{BASE}/v1/me/usage/")
    hinted = httpx.Response(429, json=REFUSED, headers={"Retry-After": "2"})
    route.side_effect = [
        hinted,
        httpx.Response(503),
        hinted,
        httpx.Response(503),
        httpx.Response(200, json={}),
    ]
    with leapi.Client(api_key="k", base_url=BASE, max_retries=2, backoff_base=0.01) as client:
        client.get_usage()
    assert route.call_count == 5
    assert [round(d) for d in slept if d >= 1] == [2, 2], "Retry-After honoured on each refusal"


@respx.mock
def test_a_quota_rejection_as_http_200_is_never_retried(slept) -> None:
    route = respx.post(f"{BASE}/v1/pipeline").respond(
        200, json={"status": "REJECTED", "reason": "Monthly quota exceeded"}
    )
    with (
        leapi.Client(api_key="k", base_url=BASE) as client,
        pytest.raises(leapi.LeapiRejectedError, match="quota") as info,
    ):
        client.submit(REQUEST)
    assert not info.value.rate_limited and route.call_count == 1 and slept == []


def test_a_hint_replaces_what_was_learned() -> None:
    clock = Clock()
    rates = limiter(clock)
    rates.accepted(rates.book())
    rates.refused(rates.book())
    assert rates.limit == 1 and rates.book().wait > 59
    rates.hinted()
    assert rates.limit is None and rates.book().wait == 0


@respx.mock
def test_a_slot_beyond_the_rate_limit_budget_is_not_waited_for(slept) -> None:
    """A caller that would rather do something else than wait (an Airflow task that defers) gives a small
    budget: a request whose slot is further away is refused at once, unsent, and gives its slot back."""
    route = respx.get(f"{BASE}/v1/pipeline/3")
    route.side_effect = [
        httpx.Response(200, json={"pipeline": {"id": 3, "status": "PROCESSING"}}),
        httpx.Response(200, json=REFUSED),
    ]
    with leapi.Client(api_key="k", base_url=BASE, rate_limit_budget=10) as client:
        client.get_pipeline(3)
        with pytest.raises(leapi.LeapiRateLimitError, match=r"slot .* is \d+s away"):
            client.get_pipeline(3)  # refused: limit 1 learned, the retry's slot is a minute away
        assert route.call_count == 2 and not any(d >= 10 for d in slept), "no long sleep"
        limiter = client.account_limiter
        waiting = limiter.next_wait()
        with pytest.raises(leapi.LeapiRateLimitError):
            client.get_pipeline(3)
        assert route.call_count == 2, "not sent"
        assert limiter.next_wait() == pytest.approx(waiting, abs=1), "its slot was given back"


def test_a_pace_slower_than_the_callers_budget_goes_in_bursts_of_a_window() -> None:
    """A share of 4 a minute is a request every 15 s: a batch that waits at most 10 s for a slot would
    stop (and defer) before every single request. In bursts, it sends four, then waits for the window."""
    clock = Clock()
    rates = limiter(clock)
    rates.pace(4, max_gap_s=10)
    waits = [rates.book().wait for _ in range(5)]
    assert waits[:4] == [0, 0, 0, 0]
    assert waits[4] == pytest.approx(60.5), "the fifth waits for the first to leave the window"
    rates.pace(4, max_gap_s=20)
    clock.now += 120
    assert [rates.book().wait for _ in range(2)] == pytest.approx([0, 15]), "within the budget: even"
