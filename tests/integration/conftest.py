"""The trigger, sensor, operators and transfers run against both ``--compat`` modes of the shared server;
the DAG folders (catalog runs) keep the default one and test docs-only mode in tests of their own."""

from __future__ import annotations

import pytest

from devkit.server import RunningServer


@pytest.fixture(scope="session")
def leapi_server(leapi_server_both: RunningServer) -> RunningServer:
    """Every test here runs against the default server and against ``--compat docs`` (only what the
    LEAPI docs promise): see ``tests/fixtures/server.py``."""
    return leapi_server_both
