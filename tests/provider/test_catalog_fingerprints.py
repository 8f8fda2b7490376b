"""HTTP change detection against real local source hosts (``devkit/source_hosts.py``): concurrency
per host measured at the server, a slow host beside a fast one, polite retries, gone sources, redirects, a
dead host given up, and the plan's phase log."""

from __future__ import annotations

import logging
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from devkit.server import free_port
from devkit.source_hosts import SourceHost, SourceHostStats, serve_source_host, serve_source_hosts
from leapi_provider.catalog.fingerprints import DetectionPolicy, source_fingerprints
from leapi_provider.catalog.http_fingerprints import request_target
from leapi_provider.catalog.http_head import HeadProtocolError, parse_head_answer

#: Small backoffs so that retry tests take about a second, not a minute.
QUICK = DetectionPolicy(backoff_base=0.1, backoff_max=0.4, timeout=5)


def _answers(host: SourceHost, path: str) -> list[tuple[float, int]]:
    return [(at, status) for at, _, p, status in host.stats.answered if p == path]


def test_a_slow_host_does_not_hold_up_a_fast_one() -> None:
    slow, fast = SourceHost(delay_s=1.5), SourceHost()
    with serve_source_hosts([slow, fast]) as (slow_url, fast_url):
        urls = [f"{slow_url}/s/{i}.jpg" for i in range(4)] + [f"{fast_url}/f/{i}.jpg" for i in range(300)]
        found = source_fingerprints(urls, policy=DetectionPolicy(per_host=2))

    assert all(found[url].fingerprint == f"etag:{slow.etag(url[len(slow_url) :])}" for url in urls[:4])
    assert all(found[url].fingerprint == f"etag:{fast.etag(url[len(fast_url) :])}" for url in urls[4:])
    slow_times = sorted(at for at, *_ in slow.stats.answered)
    fast_times = sorted(at for at, *_ in fast.stats.answered)
    # Every fast source was answered before the slow host answered its first two (1.5 s each, 2 at once).
    assert len(fast_times) == 300 and fast_times[-1] < slow_times[0]
    assert slow.stats.max_in_flight == 2 and fast.stats.max_in_flight <= 2
    assert slow_times[-1] - slow_times[0] >= 1.4, "the slow host's sources were asked two at a time"


def test_per_host_and_global_bounds_hold_at_the_servers() -> None:
    shared = SourceHostStats()  # both hosts count into one: their sum in flight is the global figure
    hosts = [SourceHost(delay_s=0.05, stats=shared), SourceHost(delay_s=0.05)]
    with serve_source_hosts(hosts) as bases:
        urls = [f"{base}/{i}.jpg" for base in bases for i in range(40)]
        alone = source_fingerprints(urls[40:], policy=DetectionPolicy(per_host=3))
        assert hosts[1].stats.max_in_flight == 3 and hosts[1].stats.opened == 3  # kept alive, not reopened
        hosts[1].stats = shared
        both = source_fingerprints(urls, policy=DetectionPolicy(per_host=4, max_connections=5))
    assert len(alone) == 40 and all(f.fingerprint for f in both.values())
    assert shared.max_in_flight == 5, "at most max_connections over all hosts, and that many used"
    assert both.stats.http_hosts == 2 and both.stats.requests["HEAD"] == 80


def test_rate_limits_are_waited_out_as_the_host_asks() -> None:
    host = SourceHost(
        script={
            "/a.jpg": [(429, {"Retry-After": "1"}), (503, {"Retry-After": "1"})],
            "/no-hint.jpg": [(503, {})],
        }
    )
    with serve_source_host(host) as base:
        urls = [f"{base}/a.jpg", f"{base}/b.jpg", f"{base}/no-hint.jpg"]
        found = source_fingerprints(urls, policy=DetectionPolicy(per_host=1, backoff_base=0.4, timeout=5))

    assert all(found[url].fingerprint and found[url].fingerprint.startswith("etag:") for url in urls)
    (first, refused), (second, unavailable), (third, ok) = _answers(host, "/a.jpg")
    assert (refused, unavailable, ok) == (429, 503, 200)
    assert 1.0 <= second - first < 2.5 and 1.0 <= third - second < 2.5, "Retry-After: 1 was honoured"
    # The whole host paused: its other source was not asked during the waits.
    (b_at, _), *_ = _answers(host, "/b.jpg")
    assert b_at > third or b_at < first
    (hint_less, _), (retried, status) = _answers(host, "/no-hint.jpg")
    assert status == 200 and retried - hint_less >= 0.2, "no Retry-After: an exponential backoff"
    assert found.stats.retries == 3


def test_failures_are_retried_a_bounded_number_of_times() -> None:
    forever = [(429, {"Retry-After": "0"})] * 50
    host = SourceHost(script={"/limited.jpg": forever, "/broken.jpg": [(500, {})] * 50})
    with serve_source_host(host) as base:
        policy = DetectionPolicy(rate_limited_attempts=3, max_attempts=2, backoff_base=0.05, timeout=5)
        found = source_fingerprints([f"{base}/limited.jpg", f"{base}/broken.jpg"], policy=policy)

    limited, broken = found[f"{base}/limited.jpg"], found[f"{base}/broken.jpg"]
    assert (limited.fingerprint, limited.gone, limited.error) == (None, False, "HTTP 429")
    assert (broken.fingerprint, broken.gone, broken.error) == (None, False, "HTTP 500")
    assert host.stats.by_path["/limited.jpg"] == 3 and host.stats.by_path["/broken.jpg"] == 2


def test_a_host_still_refusing_after_the_retry_budget_is_given_up() -> None:
    host = SourceHost(script={f"/{i}.jpg": [(429, {"Retry-After": "1"})] * 5 for i in range(20)})
    with serve_source_host(host) as base:
        policy = DetectionPolicy(per_host=2, retry_budget=0.5, timeout=5)
        found = source_fingerprints([f"{base}/{i}.jpg" for i in range(20)], policy=policy)

    assert all(f.fingerprint is None and not f.gone for f in found.values())
    assert found.stats.abandoned == 18 and sum(host.stats.requests.values()) == 2
    assert "retry budget" in found[f"{base}/19.jpg"].error


def test_gone_sources_redirects_and_duplicates() -> None:
    host = SourceHost(
        gone={"/deleted.jpg": 404, "/withdrawn.jpg": 410},
        script={"/moved.jpg": [(301, {"Location": "/new/place.jpg"})]},
    )
    with serve_source_host(host) as base:
        urls = [f"{base}/deleted.jpg", f"{base}/withdrawn.jpg", f"{base}/moved.jpg", f"{base}/x.jpg#top"]
        found = source_fingerprints([*urls, urls[0], urls[3]])

    deleted, withdrawn = found[urls[0]], found[urls[1]]
    assert (deleted.gone, deleted.error, withdrawn.gone, withdrawn.error) == (
        True,
        "HTTP 404",
        True,
        "HTTP 410",
    )
    assert found[urls[2]].fingerprint == f"etag:{host.etag('/new/place.jpg')}"
    assert found[urls[3]].fingerprint == f"etag:{host.etag('/x.jpg')}"
    assert len(found) == 4 and found.stats.redirects == 1
    # One HEAD per distinct source (no GET for the gone ones), plus the redirect's second HEAD.
    assert host.stats.requests == {"HEAD": 5}


def test_a_host_that_refuses_head_is_hashed_with_get() -> None:
    host = SourceHost(head_status=405, size=1000)
    with serve_source_host(host) as base:
        found = source_fingerprints([f"{base}/a.jpg"])
    assert found[f"{base}/a.jpg"].fingerprint.startswith("sha256:")
    assert found[f"{base}/a.jpg"].content_length == 1000
    assert host.stats.requests == {"HEAD": 1, "GET": 1}


def test_a_dead_host_is_given_up_without_stalling_a_live_one() -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    with serve_source_host() as live:
        urls = [f"{dead}/{i}.jpg" for i in range(200)] + [f"{live}/{i}.jpg" for i in range(20)]
        found = source_fingerprints(urls, policy=DetectionPolicy(host_failure_limit=3, timeout=5))

    assert all(found[url].fingerprint for url in urls[200:])
    lost = [found[url] for url in urls[:200]]
    assert all(f.fingerprint is None and not f.gone for f in lost)
    assert all("ConnectError" in f.error for f in lost)
    assert found.stats.abandoned >= 190, "the dead host's remaining sources were not each retried"


def test_head_answers_are_parsed_as_http_1_1() -> None:
    answer, keep_alive = parse_head_answer(
        b'HTTP/1.1 200 OK\r\nETag: "a"\r\nVary: Accept\r\nvary: Origin\r\nX-Long: one\r\n two'
    )
    assert (answer.status, keep_alive) == (200, True)
    assert answer.headers == {"etag": '"a"', "vary": "Accept, Origin", "x-long": "one two"}
    assert parse_head_answer(b"HTTP/1.1 200 OK\r\nConnection: close")[1] is False
    assert parse_head_answer(b"HTTP/1.0 200 OK\r\nContent-Length: 3")[1] is False
    assert parse_head_answer(b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive")[1] is True
    with pytest.raises(HeadProtocolError):
        parse_head_answer(b"SSH-2.0-OpenSSH_9.6")
    assert request_target("https://cdn.example.com") == "/"
    assert request_target("https://cdn.example.com?v=2#x") == "/?v=2"
    assert request_target("https://cdn.example.com/a/b.jpg?v=2#x") == "/a/b.jpg?v=2"


def test_the_plan_logs_its_phases_with_their_times(tmp_path: Path, caplog) -> None:
    from leapi_provider.catalog.plan import plan_run
    from leapi_provider.catalog.settings import CatalogSettings
    from leapi_provider.catalog.storage import CatalogRun

    with serve_source_host(SourceHost(gone={"/gone.jpg": 404})) as base:
        rows = [
            {"image_id": f"sku-{i}", "source_url": f"{base}/{i}.jpg", "preset": "marketplace"}
            for i in range(5)
        ]
        rows.append({"image_id": "sku-gone", "source_url": f"{base}/gone.jpg", "preset": "marketplace"})
        pq.write_table(pa.Table.from_pylist(rows), tmp_path / "manifest.parquet")
        settings = CatalogSettings(
            manifest=str(tmp_path / "manifest.parquet"),
            results=str(tmp_path / "results"),
            images=str(tmp_path / "images"),
            incremental=True,
            quota_guard="off",
            change_detection_per_host=2,
        )
        with caplog.at_level(logging.INFO, logger="leapi_provider.catalog.plan"):
            plan = plan_run(settings, CatalogRun("dag", "run", "2026-04-01", "k1"), max_map_length=1024)

    phases = [r for r in caplog.records if hasattr(r, "plan_phase")]
    assert [r.plan_phase for r in phases] == [
        "read and validate",
        "fingerprint",
        "compare with previous results",
        "credits",
        "write batches",
    ]
    assert all(r.plan_phase_seconds >= 0 for r in phases)
    fingerprint = phases[1].getMessage()
    assert "6 http(s) source(s) on 1 host(s)" in fingerprint and "HEAD 6" in fingerprint
    assert plan["counts"]["source_gone"] == 1 and plan["counts"]["to_submit"] == 5
