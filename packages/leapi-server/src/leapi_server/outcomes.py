"""What the runtime answers: domain outcomes, not HTTP.

An operation returns its result or one of the refusals below; ``api.errors`` maps each refusal to its
HTTP status code and the documented ``{"status": "REJECTED", "reason": "..."}`` body, in one place.
Every refusal has a ``reason``: the user-facing text of that body.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from leapi.constants import IDEMPOTENCY_KEY_HEADER, RATE_LIMIT_REASON
from leapi_server.clock import utc_text


class RejectionKind(str, enum.Enum):
    """Which rule a :class:`Rejected` request broke (each has its own status code)."""

    INVALID_REQUEST = "invalid_request"
    BODY_TOO_LARGE = "body_too_large"
    UNAUTHENTICATED = "unauthenticated"
    TEMP_URL_REFUSED = "temp_url_refused"


@dataclass(frozen=True, kw_only=True)
class Rejected:
    """The request breaks a rule of the contract or of this server; ``reason`` names the field."""

    reason: str
    kind: RejectionKind = RejectionKind.INVALID_REQUEST


@dataclass(frozen=True, kw_only=True)
class QuotaExceeded:
    """Accepting would take the key over its monthly quota; nothing was charged."""

    requested: int
    used: int
    quota: int
    #: Unix seconds when the quota period ends (the next calendar month, UTC).
    resets_at: float

    @property
    def reason(self) -> str:
        remaining = max(self.quota - self.used, 0)
        return (
            f"Monthly quota exceeded: this request needs {self.requested} credit(s), "
            f"{remaining} of {self.quota} remain until {utc_text(self.resets_at)}."
        )


@dataclass(frozen=True, kw_only=True)
class RateLimited:
    """Too many submits from this key in the sliding minute."""

    #: Whole seconds until one more submit would be allowed.
    retry_after_s: int

    @property
    def reason(self) -> str:
        return RATE_LIMIT_REASON


@dataclass(frozen=True, kw_only=True)
class IdempotencyConflict:
    """The Idempotency-Key was used before, for another request body."""

    key: str
    pipeline_id: int

    @property
    def reason(self) -> str:
        return (
            f"{IDEMPOTENCY_KEY_HEADER} {self.key!r} was already used for pipeline {self.pipeline_id} "
            "with a different request body; use a new key for a new request."
        )


@dataclass(frozen=True, kw_only=True)
class NotFound:
    """Nothing there for this key (unknown, another key's, or gone)."""

    reason: str


Refusal = Rejected | QuotaExceeded | RateLimited | IdempotencyConflict | NotFound


class Refused(Exception):
    """A refusal raised where it cannot be returned (an auth dependency, a body parser)."""

    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.reason)
        self.refusal = refusal


@dataclass(frozen=True, kw_only=True)
class Accepted:
    """A submit the server took on (and charged), or an idempotent replay of one."""

    #: The documented ACCEPTED answer: ``{"status": "ACCEPTED", "pipeline": {...}}``.
    body: dict[str, Any]
    #: True when an Idempotency-Key matched an earlier request: nothing new was created or charged.
    replayed: bool = False


@dataclass(frozen=True, kw_only=True)
class TempFile:
    """An output file a signed temp URL may download."""

    path: Path
    media_type: str
    #: Seconds until the URL expires, for ``Cache-Control``.
    max_age_s: int
