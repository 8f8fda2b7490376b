"""Errors raised by the ``leapi`` client: plain Python exceptions, all derived from :class:`LeapiError`.

Which errors a retry can fix:

* worth retrying later: :class:`LeapiHTTPError` (retries ran out on 5xx or network errors),
  :class:`LeapiRateLimitError`, :class:`LeapiWaitTimeoutError` (the pipelines still run),
  :class:`LeapiPipelineFailedError` (the docs: "sometimes it's enough just to process it again"),
  :class:`LeapiResultVerificationError`, :class:`LeapiResultMissingError`;
* only after checking: :class:`LeapiSubmitUncertainError` (the pipeline may exist and be charged);
* never: :class:`LeapiAuthError`, :class:`LeapiRejectedError` (other than the rate limit),
  :class:`LeapiResultExpiredError` (the result is gone: submit the image again).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any


class LeapiError(Exception):
    """Base class of every error of the ``leapi`` client."""


class LeapiHTTPError(LeapiError):
    """The API (or a result URL) answered with an HTTP error that is not retried, or retries ran out.

    :param status_code: the HTTP status (``None`` when no answer came, e.g. a connection error).
    :param method: the HTTP method.
    :param url: the URL, already redacted (no query string).
    :param detail: a short excerpt of the answer or the transport error.
    """

    def __init__(self, message: str, *, status_code: int | None, method: str, url: str, detail: str = ""):
        super().__init__(message)
        self.status_code = status_code
        self.method = method
        self.url = url
        self.detail = detail


class LeapiAuthError(LeapiHTTPError):
    """401/403 from the API: the API key is missing, wrong or not allowed to do this."""


class LeapiNotFoundError(LeapiHTTPError):
    """404 from the API, e.g. an unknown pipeline id (or one that belongs to another key)."""


class LeapiResponseError(LeapiError):
    """A successful HTTP answer whose body does not follow the LEAPI contract (e.g. a proxy's HTML page)."""


class LeapiRejectedError(LeapiError):
    """The API answered the documented ``{"status": "REJECTED", "reason": "..."}``: nothing was charged.

    :param reason: the ``reason`` the API gave (names the offending field for a bad request).
    :param status_code: the HTTP status of the answer, when one came.
    """

    #: Whether the refusal was the API's rate limit (see :class:`LeapiRateLimitError`).
    rate_limited = False

    def __init__(self, reason: str, *, status_code: int | None = None):
        super().__init__(f"LEAPI rejected the request: {reason}")
        self.reason = reason
        self.status_code = status_code


class LeapiRateLimitError(LeapiRejectedError):
    """The API's rate limit (HTTP 429 or REJECTED "Too Many Requests") outlasted the client's rate-limit
    time budget (``rate_limit_budget``).

    Unlike other rejections it is worth retrying later; nothing was submitted or charged.

    :param retry_after: the seconds the server last asked to wait, when it said.
    :param attempts: how many attempts were refused.
    :param budget: the seconds the client spent on them at most.
    """

    rate_limited = True

    def __init__(
        self,
        reason: str,
        *,
        status_code: int | None = None,
        retry_after: float | None = None,
        attempts: int | None = None,
        budget: float | None = None,
    ):
        super().__init__(reason, status_code=status_code)
        self.retry_after = retry_after
        self.attempts = attempts
        self.budget = budget
        if attempts is not None:
            spent = f" within the {budget:g}s rate-limit budget" if budget is not None else ""
            self.args = (f"{self.args[0]} (rate limited on all {attempts} attempts{spent})",)


class LeapiSubmitUncertainError(LeapiError):
    """A submit failed after its body was sent and could not be safely repeated: the pipeline may exist.

    Raised when the server did not advertise idempotent submits (and the client's ``idempotency`` mode is
    not ``always``), because a second POST could then create, and charge, a second pipeline.

    :param idempotency_key: the ``Idempotency-Key`` the request carried (``None`` when none was sent).
    """

    def __init__(self, message: str, *, idempotency_key: str | None):
        super().__init__(message)
        self.idempotency_key = idempotency_key


class LeapiPipelineFailedError(LeapiError):
    """A pipeline that was waited for ended in ``ERROR``.

    :param pipeline_ids: the failed pipeline ids.
    :param errors: the ``errors`` the API reported, per pipeline id (as sent: meant for troubleshooting).
    """

    def __init__(self, message: str, *, pipeline_ids: Sequence[int], errors: Mapping[int, Any] | None = None):
        super().__init__(message)
        self.pipeline_ids = list(pipeline_ids)
        self.errors = dict(errors or {})


class LeapiWaitTimeoutError(LeapiError):
    """Pipelines were still ``PROCESSING`` when the wait ran out (they go on: wait again to collect them).

    :param pending_ids: the pipelines not finished at the deadline.
    """

    def __init__(self, message: str, *, pending_ids: Sequence[int] = ()):
        super().__init__(message)
        self.pending_ids = list(pending_ids)


class LeapiResultExpiredError(LeapiError):
    """The temporary URL of a result has expired (LEAPI keeps results for 24 hours): submit the image again.

    :param pipeline_id: the pipeline whose result is gone.
    :param expired_at: when the URL expired, when known.
    """

    def __init__(self, message: str, *, pipeline_id: int, expired_at: datetime | None):
        super().__init__(message)
        self.pipeline_id = pipeline_id
        self.expired_at = expired_at


class LeapiResultVerificationError(LeapiError):
    """A downloaded result is not what the API reported: truncated, not an image, another size or format."""


class LeapiResultMissingError(LeapiError):
    """A pipeline is DONE but some of its images produced no output.

    :param pipeline_id: the pipeline.
    :param failed_indexes: positions in ``results`` (and in the source URLs) of the images without output.
    """

    def __init__(self, message: str, *, pipeline_id: int, failed_indexes: Sequence[int]):
        super().__init__(message)
        self.pipeline_id = pipeline_id
        self.failed_indexes = list(failed_indexes)
