"""The store on both backends, below the API: schema migration of an older database, concurrent schema
creation by replicas starting at once, leases (claim, heartbeat, expiry, graceful release), and the S3
temp store's sweep of stray objects."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from devkit.postgres import PostgresCluster
from devkit.s3 import MotoS3Server
from leapi_server.store import Store, TaskState, open_database
from leapi_server.store.schema import MIGRATIONS, POSTGRES_SCHEMA, SQLITE_SCHEMA

pytestmark = pytest.mark.own_backends


class WallClock:
    """The lease clock, moved by hand (leases read it instead of ``time.time``)."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def _without_new_columns(schema: str) -> str:
    """The first release's schema: today's minus the columns added since (``MIGRATIONS``)."""
    lines = schema.splitlines()
    added = {column for _table, column, _s, _p in MIGRATIONS}
    kept = [line for line in lines if line.strip().split(" ", 1)[0] not in added]
    text = "\n".join(kept)
    return text.replace("finished_at REAL,\n);", "finished_at REAL\n);").replace(
        "finished_at DOUBLE PRECISION,\n);", "finished_at DOUBLE PRECISION\n);"
    )


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'leapi.sqlite3'}"
        return
    cluster: PostgresCluster = request.getfixturevalue("postgres_cluster")
    yield cluster.create_database(f"store_{abs(hash(str(tmp_path))) % 10**12}")


def _columns(url: str, table: str) -> set[str]:
    if url.startswith("sqlite:///"):
        with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
            return {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name=%s", (table,)
        )
        return {row[0] for row in rows.fetchall()}


def test_an_older_database_is_migrated_at_start(database_url: str) -> None:
    if database_url.startswith("sqlite:///"):
        with sqlite3.connect(database_url.removeprefix("sqlite:///")) as conn:
            conn.executescript(_without_new_columns(SQLITE_SCHEMA))
    else:
        with psycopg.connect(database_url) as conn:
            conn.execute(_without_new_columns(POSTGRES_SCHEMA))
    assert "lease_until" not in _columns(database_url, "tasks")
    open_database(database_url).close()
    for table, column, _s, _p in MIGRATIONS:
        assert column in _columns(database_url, table)


def test_replicas_starting_at_once_create_the_schema_once(database_url: str) -> None:
    errors: list[BaseException] = []

    def start() -> None:
        try:
            open_database(database_url).close()
        except Exception as exc:  # noqa: BLE001 - collected and asserted on below
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert "lease_until" in _columns(database_url, "tasks")


def test_leases_expire_unless_renewed_and_are_returned_at_stop(database_url: str) -> None:
    wall = WallClock()
    database = open_database(database_url)
    store = Store(database=database)
    store.tasks._lease_clock = wall  # leases on a clock the test moves
    try:
        created = store.pipelines.accept(
            owner="o",
            request={"operations": [{}]},
            urls=["http://a/1.jpg", "http://a/2.jpg"],
            notify_url=None,
            quota=0,
        )
        first = store.tasks.claim(limit=1, boot_id="alive", lease_s=30)
        second = store.tasks.claim(limit=5, boot_id="dead", lease_s=30)
        assert [(t.index, t.attempts) for t in first] == [(0, 1)]
        assert [(t.index, t.attempts) for t in second] == [(1, 1)]  # never the task another boot holds

        wall.now += 20
        assert store.tasks.heartbeat(boot_id="alive", lease_s=30) == 1
        wall.now += 20  # "dead" did not renew: 40 s after its claim, its lease is over; "alive"'s is not
        assert store.tasks.recover(max_attempts=3) == 1
        again = store.tasks.claim(limit=5, boot_id="alive", lease_s=30)
        assert [(t.index, t.attempts) for t in again] == [(1, 2)]  # the re-run counts as an attempt

        assert store.tasks.release_all(boot_id="alive") == 2
        states = store.pipelines.get(created.pipeline_id)  # type: ignore[union-attr]
        assert states is not None
        assert [(t.state, t.attempts) for t in states[1]] == [(TaskState.PENDING, 0), (TaskState.PENDING, 1)]
    finally:
        store.close()


def test_s3_sweep_removes_only_old_unreferenced_objects(
    moto_s3: MotoS3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from leapi_server import tempstore_s3

    s3 = moto_s3.client()
    s3.create_bucket(Bucket="sweep")
    store = tempstore_s3.S3TempStore(spec="s3://sweep/out", scratch=tmp_path / "scratch", client=s3)
    for key in ("out/p/1/live_a.jpg", "out/p/2/stray_b.jpg", "elsewhere/p/3/not_ours.jpg"):
        s3.put_object(Bucket="sweep", Key=key, Body=b"x")

    assert store.remove_strays({"p/1/live_a.jpg"}) == 0  # the stray is younger than the grace period
    monkeypatch.setattr(tempstore_s3, "ORPHAN_GRACE_S", -60.0)
    assert store.remove_strays({"p/1/live_a.jpg"}) == 1
    left = {item["Key"] for item in s3.list_objects_v2(Bucket="sweep")["Contents"]}
    assert left == {"out/p/1/live_a.jpg", "elsewhere/p/3/not_ours.jpg"}
