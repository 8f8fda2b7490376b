"""Test-wide settings. Airflow reads its configuration at import time, so the environment is set first."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

_AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="leapi-airflow-home-"))
os.environ.setdefault("AIRFLOW_HOME", str(_AIRFLOW_HOME))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ.setdefault("AIRFLOW__CORE__UNIT_TEST_MODE", "True")
os.environ.setdefault("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", f"sqlite:///{_AIRFLOW_HOME / 'airflow.db'}")

pytest_plugins = [
    "tests.fixtures.server",
    "tests.fixtures.airflow",
    "tests.fixtures.s3",
    "tests.fixtures.postgres",
    "tests.fixtures.webhooks",
]
