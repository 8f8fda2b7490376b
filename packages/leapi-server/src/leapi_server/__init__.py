"""``leapi-server``: a LEAPI-compatible image enhancement server (FastAPI + SQLite + a worker pool).

Layout: ``__main__`` (command line) -> ``server`` (process: logging, ``engine_check``, data-dir lock,
uvicorn) -> ``app`` (the FastAPI application) -> ``api`` (one router per resource in ``api.routes``,
shared dependencies in ``api.deps``, refusals to HTTP in ``api.errors``) -> ``runtime`` (the operations,
answering ``outcomes``). Under the runtime: ``config`` (flags), ``clock`` (injectable time), ``access``
(API keys, rate limit), ``store`` (SQLite: pipelines and ledger, tasks, webhook deliveries), ``fetch``
(safe source download), ``worker`` (fetch + engine in worker processes), ``dispatcher`` (claims tasks,
feeds the pool, records results), ``webhook_sender``, ``tempstore`` (signed tmp URLs), ``views`` (the
documented JSON shapes), ``datadir`` (lock, secrets) and ``engine`` (the pure image stages).
"""

from __future__ import annotations

from importlib.metadata import version

#: The distribution's version: its one source is ``packages/leapi-server/pyproject.toml``.
__version__ = version("leapi-server")
