"""Fixtures of the DAG tests here: the catalog ones are shared from tests/fixtures/catalog.py."""

from __future__ import annotations

from tests.fixtures.catalog import catalog_bucket, catalog_env, catalog_site  # noqa: F401 - fixtures
