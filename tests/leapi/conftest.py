"""Fixtures of the ``leapi`` client tests: recorded backoffs, and a clean idempotency registry per test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import leapi
from devkit.server import RunningServer
from leapi.idempotency import ADVERTISED


class SleepRecorder:
    """Stands in for the clients' sleeps: records each wait instead of waiting."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    # (set on the client classes as bound methods of the recorder: the client is not passed)
    def sleep(self, seconds: float) -> None:
        self.delays.append(seconds)

    async def asleep(self, seconds: float) -> None:
        self.delays.append(seconds)


@pytest.fixture(autouse=True)
def forget_advertised() -> Iterator[None]:
    """What servers advertised is process-wide: each test starts without it (fake hosts are reused)."""
    ADVERTISED.clear()
    yield
    ADVERTISED.clear()


@pytest.fixture
def slept(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Every backoff, rate-limit wait and poll gap of every client, recorded instead of waited for."""
    recorder = SleepRecorder()
    monkeypatch.setattr(leapi.Client, "_sleep", recorder.sleep)
    monkeypatch.setattr(leapi.AsyncClient, "_sleep", recorder.asleep)
    return recorder.delays


@pytest.fixture(scope="session")
def leapi_server(leapi_server_both: RunningServer) -> RunningServer:
    """Every test here runs against the default server and against ``--compat docs`` (only what the
    LEAPI docs promise): see ``tests/fixtures/server.py``."""
    return leapi_server_both
