"""Fixtures of the DAG tests here: the catalog ones are shared from tests/fixtures/catalog.py."""

from __future__ import annotations

import pytest

from devkit.server import RunningServer
from tests.fixtures.catalog import catalog_bucket, catalog_env, catalog_site  # noqa: F401 - fixtures


@pytest.fixture(scope="session")
def leapi_server(leapi_server_default: RunningServer) -> RunningServer:
    """DAG runs here use the default server (``tests/integration/conftest.py`` runs the rest in both modes;
    catalog runs in docs-only mode have their own tests)."""
    return leapi_server_default
