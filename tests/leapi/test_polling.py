"""The wait's read plan (:mod:`leapi.polling`): reads per pipeline when pipelines finish in order, out of
order and shuffled, and every pipeline collected whatever the order. Simulated time: no I/O here (the
clients' and the trigger's tests run the same plans against a real ``leapi-server``)."""

from __future__ import annotations

import itertools
import random

import pytest

from leapi.models import Pipeline, PipelineStatus
from leapi.polling import FinishProbe, InOrderPoll, poll_schedule


def simulate(finish_at: dict[int, float], *, poll_interval: float = 15.0) -> tuple[InOrderPoll, int, float]:
    """Wait for every pipeline of ``finish_at`` (id -> second it finishes); ``(poll, rounds, end)``."""
    poll = InOrderPoll(sorted(finish_at))
    now, rounds = 0.0, 0
    gaps = poll_schedule(poll_interval, 2.0)
    while poll.pending:
        now += next(gaps)
        rounds += 1
        for pipeline_id in poll.round():
            done = finish_at[pipeline_id] <= now
            status = PipelineStatus.DONE if done else PipelineStatus.PROCESSING
            poll.record(Pipeline(id=pipeline_id, status=status))
        assert rounds < 10_000, "the wait ends"
    return poll, rounds, now


def in_order(pipelines: int, every: float = 0.15) -> dict[int, float]:
    return {pid: 3.0 + pid * every for pid in range(1, pipelines + 1)}


@pytest.mark.parametrize("pipelines", [12, 250, 2500])
def test_in_order_completion_costs_about_one_read_per_pipeline(pipelines: int) -> None:
    finish_at = in_order(pipelines)
    poll, rounds, end = simulate(finish_at)
    assert poll.reads == pipelines + rounds - 1, "each finished pipeline once, plus one per round"
    assert poll.reads / pipelines <= 1.3
    assert end - max(finish_at.values()) <= max(2.0, 0.1 * end) + 1e-9, "ends about 10% after the last"


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_shuffled_completion_stays_bounded_and_collects_everything(seed: int) -> None:
    times = list(in_order(250).values())
    random.Random(seed).shuffle(times)
    finish_at = dict(zip(range(1, 251), times, strict=True))
    poll, rounds, end = simulate(finish_at)
    assert sorted(poll.finished) == list(range(1, 251))
    # At most one read per finished pipeline, one per round, and one scout per stuck_rounds rounds.
    assert poll.reads <= 250 + rounds + rounds // 3
    assert poll.reads / 250 <= 1.3
    assert end <= max(finish_at.values()) * 1.1 + 2.0


def test_a_stuck_head_does_not_hold_back_the_pipelines_behind_it() -> None:
    finish_at = in_order(50)
    finish_at[1] = 10_000.0  # the first pipeline hangs for hours; the rest are done within seconds
    poll = InOrderPoll(sorted(finish_at))
    now, gaps = 0.0, poll_schedule(15.0, 2.0)
    reads_before_collected = None
    while poll.pending:
        now += next(gaps)
        for pipeline_id in poll.round():
            status = PipelineStatus.DONE if finish_at[pipeline_id] <= now else PipelineStatus.PROCESSING
            poll.record(Pipeline(id=pipeline_id, status=status))
        if poll.pending == [1] and reads_before_collected is None:
            reads_before_collected, collected_at = poll.reads, now
    assert collected_at < 60, "the other 49 were collected by a scout within a minute, not after the head"
    assert reads_before_collected <= 49 + 10


def test_a_round_stops_at_the_first_running_pipeline_and_goes_on_from_there() -> None:
    poll = InOrderPoll([10, 11, 12, 13])
    first = poll.round()
    assert next(first) == 10
    poll.record(Pipeline(id=10, status=PipelineStatus.DONE))
    assert next(first) == 11
    poll.record(Pipeline(id=11, status=PipelineStatus.PROCESSING))
    assert list(first) == [], "11 is still running: the round ends"
    assert poll.pending == [11, 12, 13] and poll.reads == 2
    second = poll.round()
    assert next(second) == 11


def test_the_probe_reads_one_pipeline_per_round_and_scouts_past_a_stuck_one() -> None:
    ids = list(range(1, 21))
    probe = FinishProbe(ids, want=5)
    assert probe.target == 5
    statuses = {pid: PipelineStatus.PROCESSING for pid in ids}
    statuses[9] = PipelineStatus.DONE  # out of order: 9 finished, 5 (the target) did not
    read = []
    for _ in itertools.count():
        pipeline_id = probe.next_id()
        read.append(pipeline_id)
        if probe.record(statuses[pipeline_id]):
            break
        assert len(read) < 100
    assert read[:3] == [5, 5, 5], "the target, while it is not stuck"
    assert probe.ready_through == 9 and probe.reads == len(read)
    scouts = [pid for pid in read if pid != 5]
    assert scouts == [6, 7, 8, 9], "scouts go past the target, one at a time, in order"
    assert read.count(5) == 2 * len(scouts) + 1, "one scout every stuck_rounds (3) rounds"


def test_the_probe_is_ready_when_its_target_finishes() -> None:
    probe = FinishProbe([7, 8, 9], want=10)
    assert probe.target == 9, "want beyond the pending ones: the last one"
    assert probe.next_id() == 9
    assert probe.record(PipelineStatus.ERROR) and probe.ready_through == 9


def test_a_round_through_a_probed_pipeline_reads_every_one_before_it() -> None:
    poll = InOrderPoll([1, 2, 3, 4, 5, 6])
    statuses = {1: "DONE", 2: "PROCESSING", 3: "DONE", 4: "DONE", 5: "DONE", 6: "PROCESSING"}
    read = []
    for pipeline_id in poll.round(through=4):
        read.append(pipeline_id)
        poll.record(Pipeline(id=pipeline_id, status=PipelineStatus(statuses[pipeline_id])))
    assert read == [1, 2, 3, 4, 5, 6], "through 4 whatever 2 says, then on while finished"
    assert poll.pending == [2, 6]


def test_a_round_through_hinted_pipelines_reads_none_past_them() -> None:
    poll = InOrderPoll([1, 2, 3, 4, 5, 6])
    statuses = {1: "DONE", 2: "PROCESSING", 3: "DONE", 4: "DONE", 5: "DONE", 6: "PROCESSING"}
    read = []
    for pipeline_id in poll.round(through=4, beyond=False):
        read.append(pipeline_id)
        poll.record(Pipeline(id=pipeline_id, status=PipelineStatus(statuses[pipeline_id])))
    assert read == [1, 2, 3, 4], "5 is done too, but no webhook said so: not read"
    assert poll.pending == [2, 5, 6] and poll.reads == 4
