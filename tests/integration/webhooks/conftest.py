"""Fixtures of the webhook tests here: a ``leapi-server`` that signs its webhooks; the catalog's are shared
from tests/fixtures/catalog.py."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from devkit.server import RunningServer, running_server
from tests.fixtures.catalog import catalog_bucket, catalog_env, catalog_site  # noqa: F401 - fixtures
from tests.fixtures.webhooks import SIGNING_SECRET


@pytest.fixture(scope="module")
def signing_server_args() -> tuple[str, ...]:
    """More ``leapi-server`` flags for ``signing_server`` (a test module overrides this fixture)."""
    return ()


@pytest.fixture(scope="module")
def signing_server(
    tmp_path_factory: pytest.TempPathFactory, signing_server_args: tuple[str, ...]
) -> Iterator[RunningServer]:
    """A leapi-server (one per test module) that signs its webhooks with ``SIGNING_SECRET`` and retries a
    refused one after 1 s."""
    with running_server(
        data_dir=tmp_path_factory.mktemp("leapi-signing-server"),
        extra_args=(
            "--workers",
            "1",
            "--rate-limit-per-minute",
            "0",
            "--webhook-secret",
            SIGNING_SECRET,
            "--webhook-retry-delays",
            "1,1",
            *signing_server_args,
        ),
    ) as server:
        yield server
