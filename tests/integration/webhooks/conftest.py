"""Fixtures of the webhook tests here: the catalog's are shared from tests/fixtures/catalog.py."""

from __future__ import annotations

from tests.fixtures.catalog import catalog_bucket, catalog_env, catalog_site  # noqa: F401 - fixtures
