"""``leapi-server``: a LEAPI-compatible image enhancement server (FastAPI + SQLite + a worker pool).

Layout: ``config`` (flags), ``store`` (SQLite: pipelines, tasks, ledger, webhooks, idempotency),
``fetch`` (safe source download), ``worker`` (fetch + engine in worker processes), ``dispatcher``
(claims tasks, feeds the pool, records results), ``webhook_sender``, ``tempstore`` (signed tmp URLs),
``app`` (thin routes), ``engine`` (the pure image stages).
"""

from __future__ import annotations

from importlib.metadata import version

#: The distribution's version: its one source is ``packages/leapi-server/pyproject.toml``.
__version__ = version("leapi-server")
