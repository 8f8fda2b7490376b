"""Test-wide settings. Airflow reads its configuration at import time, so the environment is set first."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

_AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="leapi-airflow-home-"))
os.environ.setdefault("AIRFLOW_HOME", str(_AIRFLOW_HOME))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ.setdefault("AIRFLOW__CORE__UNIT_TEST_MODE", "True")
os.environ.setdefault("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", f"sqlite:///{_AIRFLOW_HOME / 'airflow.db'}")
# dag.test() runs a task and its triggers in one process, with no executor to race: the triggers' wait
# for Airflow's reporting window after a deferral (leapi_provider.triggers.leapi.earliest_resume) is
# shortened here to keep the suite fast. make e2e runs a real scheduler with the defaults.
os.environ.setdefault("AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL", "1")
os.environ.setdefault("AIRFLOW__LEAPI__RESUME_MARGIN", "1")

pytest_plugins = [
    "tests.fixtures.server",
    "tests.fixtures.airflow",
    "tests.fixtures.s3",
    "tests.fixtures.postgres",
    "tests.fixtures.wheels",
    "tests.fixtures.webhooks",
]


@pytest.fixture(autouse=True)
def forget_learned_rates() -> Iterator[None]:
    """The request rates the clients learn per account are process-wide (and every request, status
    reads included, waits for its slot): each test starts and ends without them."""
    from leapi.ratelimit import SHARED_LIMITERS

    SHARED_LIMITERS.clear()
    yield
    SHARED_LIMITERS.clear()
