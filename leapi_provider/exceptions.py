"""Errors raised by the LEAPI provider.

Every error is a :class:`LeapiError` (an ``AirflowException``). Errors that no retry can fix (a REJECTED
request, a bad API key, an expired result URL) also derive from ``AirflowFailException`` so that Airflow
fails the task at once instead of burning its retries on them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from airflow.sdk.exceptions import AirflowException, AirflowFailException


class LeapiError(AirflowException):
    """Base class of every LEAPI provider error."""


class LeapiHTTPError(LeapiError):
    """The API answered with an HTTP error that is not retried (or retries ran out).

    :param status_code: the HTTP status (``None`` when no answer came, e.g. a connection error).
    :param method: the HTTP method.
    :param url: the URL, already redacted (no query string).
    :param detail: a short excerpt of the answer or the transport error.
    """

    def __init__(self, message: str, *, status_code: int | None, method: str, url: str, detail: str = ""):
        super().__init__(message)
        # (Airflow's exceptions carry an HTTPStatus for its API; this one is the LEAPI answer's, or None)
        self.status_code = status_code  # type: ignore[assignment]
        self.method = method
        self.url = url
        self.detail = detail


class LeapiAuthError(LeapiHTTPError, AirflowFailException):
    """401/403 from the API: the API key is missing, wrong or not allowed to do this."""


class LeapiNotFoundError(LeapiHTTPError):
    """404 from the API, e.g. an unknown pipeline id (or one that belongs to another key)."""


class LeapiRejectedError(LeapiError, AirflowFailException):
    """The API answered ``"status": "REJECTED"`` for another reason than its rate limit: not retryable.

    :param reason: the ``reason`` the API gave (names the offending field for a bad request).
    """

    def __init__(self, reason: str, *, status_code: int | None = None):
        super().__init__(f"LEAPI rejected the pipeline: {reason}")
        self.reason = reason
        # (Airflow's exceptions carry an HTTPStatus for its API; this one is the LEAPI answer's, or None)
        self.status_code = status_code  # type: ignore[assignment]


class LeapiSubmitUncertainError(LeapiError):
    """A submit failed after its body was sent and could not be safely retried: the pipeline may exist.

    Raised only when the server did not advertise idempotency support (and the connection's
    ``idempotency`` extra is not ``always``), because then a second POST could create, and charge, a
    second pipeline. See ``docs/provider.md``, "Retries and idempotency".

    :param idempotency_key: the ``Idempotency-Key`` the request carried (to look it up later).
    """

    def __init__(self, message: str, *, idempotency_key: str | None):
        super().__init__(message)
        self.idempotency_key = idempotency_key


class LeapiPipelineFailedError(LeapiError):
    """A pipeline the task waited for ended in ``ERROR``.

    :param pipeline_ids: the failed pipeline ids.
    :param errors: the ``errors`` the API reported, per pipeline id (as sent: meant for troubleshooting).
    """

    def __init__(self, message: str, *, pipeline_ids: list[int], errors: dict[int, Any] | None = None):
        super().__init__(message)
        self.pipeline_ids = pipeline_ids
        self.errors = errors or {}


class LeapiWaitTimeoutError(LeapiError):
    """Waiting for pipelines ran past the task's ``timeout`` (a retry reconnects, it does not resubmit)."""


class LeapiResultExpiredError(LeapiError, AirflowFailException):
    """The temporary URL of a result has expired (LEAPI keeps results for 24 hours): re-run the image.

    :param pipeline_id: the pipeline whose result is gone.
    :param expired_at: when the URL expired, when known.
    """

    def __init__(self, message: str, *, pipeline_id: int, expired_at: datetime | None):
        super().__init__(message)
        self.pipeline_id = pipeline_id
        self.expired_at = expired_at


class LeapiResultVerificationError(LeapiError):
    """A downloaded result does not match what the API reported (truncated, not an image, wrong size)."""


class LeapiResultMissingError(LeapiError):
    """A pipeline is DONE but some of its images produced no output (their errors are in the message)."""

    def __init__(self, message: str, *, pipeline_id: int, failed_indexes: list[int]):
        super().__init__(message)
        self.pipeline_id = pipeline_id
        self.failed_indexes = failed_indexes
