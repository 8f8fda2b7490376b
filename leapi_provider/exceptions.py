"""Errors raised by the LEAPI provider: the ``leapi`` client's errors, made Airflow exceptions.

Each class here subclasses its twin in :mod:`leapi.errors` *and* ``AirflowException``, so that

* code written against the client keeps working (``except leapi.LeapiRejectedError`` catches
  ``leapi_provider.exceptions.LeapiRejectedError``), and
* errors that no retry can fix (a REJECTED request, a bad API key, an expired result URL) also derive
  from ``AirflowFailException``: Airflow fails the task at once instead of burning its retries on them.

``status_code`` is the LEAPI answer's HTTP status (or ``None``); it shadows the fixed ``HTTPStatus`` that
``AirflowException`` declares for Airflow's own API, hence the ``type: ignore[misc]`` on those classes.

The hook turns every client error into its twin (:func:`airflow_errors`); a rate limit that outlasted the
retries (:class:`LeapiRateLimitError`) is a rejection too, but stays retryable.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from airflow.sdk.exceptions import AirflowException, AirflowFailException

from leapi import errors


class LeapiError(errors.LeapiError, AirflowException):
    """Base class of every LEAPI provider error."""


class LeapiHTTPError(LeapiError, errors.LeapiHTTPError):  # type: ignore[misc]
    """The API answered with an HTTP error that is not retried, or retries ran out (``status_code``)."""


class LeapiAuthError(LeapiHTTPError, errors.LeapiAuthError, AirflowFailException):  # type: ignore[misc]
    """401/403 from the API: the API key is missing, wrong or not allowed to do this."""


class LeapiNotFoundError(LeapiHTTPError, errors.LeapiNotFoundError):  # type: ignore[misc]
    """404 from the API, e.g. an unknown pipeline id (or one that belongs to another key)."""


class LeapiResponseError(LeapiError, errors.LeapiResponseError):
    """A successful answer whose body does not follow the LEAPI contract."""


class LeapiRejectedError(LeapiError, errors.LeapiRejectedError, AirflowFailException):  # type: ignore[misc]
    """REJECTED for another reason than the rate limit (``reason``): not retryable."""


class LeapiRateLimitError(LeapiError, errors.LeapiRateLimitError):  # type: ignore[misc]
    """Still rate limited when the hook's retries ran out: Airflow may retry the task later.

    (Not a :class:`LeapiRejectedError` of this module: that one fails the task without retries.)
    """


class LeapiSubmitUncertainError(LeapiError, errors.LeapiSubmitUncertainError):
    """An ambiguous submit failure that could not be retried safely (``idempotency_key``)."""


class LeapiPipelineFailedError(LeapiError, errors.LeapiPipelineFailedError):
    """A pipeline the task waited for ended in ERROR (``pipeline_ids``, ``errors``); the retry resubmits."""


class LeapiWaitTimeoutError(LeapiError, errors.LeapiWaitTimeoutError):
    """Waiting ran past the task's ``timeout`` (a retry reconnects, it does not resubmit)."""


class LeapiResultExpiredError(LeapiError, errors.LeapiResultExpiredError, AirflowFailException):
    """The temporary URL of a result has expired (``pipeline_id``, ``expired_at``): re-run the image."""


class LeapiResultVerificationError(LeapiError, errors.LeapiResultVerificationError):
    """A downloaded result does not match what the API reported (truncated, not an image, wrong size)."""


class LeapiResultMissingError(LeapiError, errors.LeapiResultMissingError):
    """A pipeline is DONE but some of its images produced no output (``failed_indexes``)."""


#: The twin of each client error, most specific first (a subclass before its base).
_TWINS: dict[type[errors.LeapiError], type[LeapiError]] = {
    errors.LeapiAuthError: LeapiAuthError,
    errors.LeapiNotFoundError: LeapiNotFoundError,
    errors.LeapiHTTPError: LeapiHTTPError,
    errors.LeapiResponseError: LeapiResponseError,
    errors.LeapiRateLimitError: LeapiRateLimitError,
    errors.LeapiRejectedError: LeapiRejectedError,
    errors.LeapiSubmitUncertainError: LeapiSubmitUncertainError,
    errors.LeapiPipelineFailedError: LeapiPipelineFailedError,
    errors.LeapiWaitTimeoutError: LeapiWaitTimeoutError,
    errors.LeapiResultExpiredError: LeapiResultExpiredError,
    errors.LeapiResultVerificationError: LeapiResultVerificationError,
    errors.LeapiResultMissingError: LeapiResultMissingError,
    errors.LeapiError: LeapiError,
}

#: What to do in Airflow, added to the client's message where it differs from "submit again".
_AIRFLOW_ADVICE: dict[type[LeapiError], str] = {
    LeapiResultExpiredError: " In Airflow: clear the task that submitted the pipeline, then this task.",
}


def airflow_error(error: errors.LeapiError) -> LeapiError:
    """The provider twin of a client error: same message and attributes, Airflow's retry semantics."""
    if isinstance(error, LeapiError):
        return error
    twin_class = next((_TWINS[cls] for cls in type(error).__mro__ if cls in _TWINS), LeapiError)
    # (built without __init__: the twin takes over the client error's state as it is)
    twin = twin_class.__new__(twin_class)
    twin.__dict__.update(vars(error))
    message = str(error) + _AIRFLOW_ADVICE.get(twin_class, "")
    twin.args = (message, *error.args[1:])
    return twin


@contextlib.contextmanager
def airflow_errors() -> Iterator[None]:
    """Re-raise client errors (:mod:`leapi.errors`) as their provider twins, keeping the traceback."""
    try:
        yield
    except errors.LeapiError as exc:
        if isinstance(exc, LeapiError):
            raise
        raise airflow_error(exc).with_traceback(exc.__traceback__) from exc.__cause__
