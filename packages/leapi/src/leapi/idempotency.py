"""Idempotent submits: when a submit that may have reached the API can be sent again.

A submit that failed after its body was sent (a read timeout, a dropped connection, a 5xx) is ambiguous:
the pipeline may exist and be charged. Repeating it is safe only when the server dedupes on the
``Idempotency-Key`` header, which the public LEAPI docs do not promise; ``leapi-server`` does, and says so
with ``X-Leapi-Idempotency: supported`` on every answer. :class:`IdempotencyMode` chooses how much to
trust; :data:`ADVERTISED` remembers, per base URL and for the whole process, what each server said.
"""

from __future__ import annotations

import enum
import hashlib
import json
import threading
import uuid
from collections.abc import Mapping

from leapi.constants import IDEMPOTENCY_SUPPORT_HEADER
from leapi.models import PipelineRequest


class IdempotencyMode(str, enum.Enum):
    """When may an ambiguous submit failure be retried.

    * ``auto``: once the server advertised support (``X-Leapi-Idempotency: supported``) on any answer,
      or on one cheap ``GET /v1/me/usage/`` made to find out.
    * ``always``: always (you know your server dedupes on ``Idempotency-Key``).
    * ``never``: never; no ``Idempotency-Key`` header is sent either.
    """

    AUTO = "auto"
    ALWAYS = "always"
    NEVER = "never"


class AdvertisedSupport:
    """Whether each base URL advertised idempotent submits; thread-safe, shared by every client of a process.

    A process (an Airflow worker, a triggerer) builds many short-lived clients for one API: what one of
    them learned spares the others a probe.
    """

    def __init__(self) -> None:
        self._by_base_url: dict[str, bool] = {}
        self._lock = threading.Lock()

    def note(self, base_url: str, headers: Mapping[str, str]) -> None:
        """Remember what an answer from ``base_url`` said (answers without the header say nothing)."""
        value = headers.get(IDEMPOTENCY_SUPPORT_HEADER)
        if value is None:
            return
        with self._lock:
            self._by_base_url[base_url] = value.strip().lower() == "supported"

    def get(self, base_url: str) -> bool | None:
        """``True``/``False`` once ``base_url`` said; ``None`` while it has not."""
        with self._lock:
            return self._by_base_url.get(base_url)

    def clear(self) -> None:
        """Forget everything (tests; or after a server behind a base URL was replaced)."""
        with self._lock:
            self._by_base_url.clear()


#: What the servers this process talked to advertised.
ADVERTISED = AdvertisedSupport()


def supports_idempotency(mode: IdempotencyMode, base_url: str) -> bool | None:
    """Whether an ambiguous submit to ``base_url`` may be repeated; ``None``: unknown yet (``auto``)."""
    if mode is IdempotencyMode.ALWAYS:
        return True
    if mode is IdempotencyMode.NEVER:
        return False
    return ADVERTISED.get(base_url)


def request_fingerprint(request: PipelineRequest) -> str:
    """A stable hash of what a request asks for (its documented wire form, keys sorted)."""
    canonical = json.dumps(request.to_wire(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def derive_idempotency_key(request: PipelineRequest, *scope: object) -> str:
    """A deterministic ``Idempotency-Key`` for ``request`` submitted on behalf of ``scope``.

    Pass what identifies the job, not the attempt (e.g. an Airflow task instance without its try number):
    a retried job then sends the same key and gets its first pipeline back instead of a second one.
    """
    material = "\x1f".join([*(str(part) for part in scope), request_fingerprint(request)])
    return "leapi-" + hashlib.sha256(material.encode()).hexdigest()[:40]


def random_idempotency_key() -> str:
    """A fresh key for one submit call (the same on every attempt of that call)."""
    return f"leapi-{uuid.uuid4().hex}"
