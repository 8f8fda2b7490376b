"""The hook against a LEAPI that gives no rate-limit hints: ``leapi-server --compat docs`` with a low limit.

The measurement of issue 15: twelve submits in a row against a limit of 8 per minute, no ``Retry-After``,
every REJECTED answered with HTTP 200. Before the time budget and the shared limiter, the 12th failed
after 7 attempts and 62 s.
"""

from __future__ import annotations

import itertools
import logging
import re
import time
from collections.abc import Iterator
from datetime import datetime

import pytest

from devkit.server import RunningServer, docs_only_rate_limited_server, quick_start_body
from leapi_provider.hooks.leapi import LeapiHook

pytestmark = pytest.mark.slow
LIMIT_PER_MINUTE = 8
SUBMITS = 12


@pytest.fixture
def strict_server() -> Iterator[RunningServer]:
    with docs_only_rate_limited_server(per_minute=LIMIT_PER_MINUTE, workers=1) as server:
        yield server


def test_twelve_submits_against_eight_per_minute_without_hints_are_all_accepted(
    strict_server: RunningServer, leapi_conn_factory, source_photos: dict[str, str], caplog
) -> None:
    conn_id = leapi_conn_factory("leapi_strict", strict_server.base_url, strict_server.api_key)
    started = time.monotonic()
    with caplog.at_level(logging.INFO, logger="leapi"), LeapiHook(conn_id) as hook:
        ids = [hook.submit_pipeline(quick_start_body(source_photos["cat.jpg"])) for _ in range(SUBMITS)]
        waited = hook.get_conn().rate_limit_waited_s
    elapsed = time.monotonic() - started

    assert len(set(ids)) == SUBMITS, "every submit was accepted, each its own pipeline"
    assert strict_server.used_credits() == SUBMITS, "exactly one credit per accepted submit"
    # A minute window: the 9th waits for the first ones to leave it, then the rest fit.
    assert 55 <= waited <= 75 and elapsed < 120, (waited, elapsed)
    posts = strict_server.logs().count('"POST /v1/pipeline HTTP/1.1" 200')
    refused = posts - SUBMITS
    assert 1 <= refused <= 2, f"{refused} refused attempts: the client must not hammer the limit"
    learned = [r.getMessage() for r in caplog.records if "pacing requests" in r.getMessage()]
    assert learned and re.search(rf"refused after {LIMIT_PER_MINUTE} accepted", learned[0]), learned
    print(f"\n12 submits at 8/min: {elapsed:.1f}s, {waited:.1f}s waited, {refused} refused attempt(s)")


def test_a_declared_pace_spaces_submits_and_reads_sync_and_async(
    strict_server: RunningServer, leapi_conn_factory, source_photos: dict[str, str]
) -> None:
    """``paced_per_minute`` (the catalog's share of a declared ``api_requests_per_minute``): every request,
    status reads too (which this server never refuses, so nothing could be learned from them), leaves at
    the declared rate from the first one, and none is refused."""
    import asyncio

    from leapi.ratelimit import SHARED_LIMITERS

    SHARED_LIMITERS.clear()
    conn_id = leapi_conn_factory("leapi_paced", strict_server.base_url, strict_server.api_key)
    pace = 120  # (0.5 s apart)
    log_start = len(strict_server.logs())
    with LeapiHook(conn_id, paced_per_minute=pace) as hook:
        ids = [hook.submit_pipeline(quick_start_body(source_photos["cat.jpg"])) for _ in range(4)]
        for pipeline_id in ids:
            hook.get_pipeline(pipeline_id)

    async def read_async() -> None:
        async_hook = LeapiHook(conn_id, paced_per_minute=pace)
        try:
            for pipeline_id in ids:
                await async_hook.aget_pipeline(pipeline_id)
        finally:
            await async_hook.aclose()

    asyncio.run(read_async())
    SHARED_LIMITERS.clear()

    lines = [
        line
        for line in strict_server.logs()[log_start:].splitlines()
        if '"POST /v1/pipeline' in line or '"GET /v1/pipeline/' in line
    ]
    stamps = [datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f") for line in lines]
    assert len(stamps) == 12, lines
    gaps = [(later - earlier).total_seconds() for earlier, later in itertools.pairwise(stamps)]
    assert min(gaps) >= 0.4, f"requests {gaps} s apart: paced at {pace}/min is 0.5 s"
    assert strict_server.logs().count('"POST /v1/pipeline HTTP/1.1" 200') == 4, (
        "nothing refused, nothing retried"
    )
