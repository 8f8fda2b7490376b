"""How LEAPI errors meet Airflow's retries.

The hook, triggers and operators raise the ``leapi`` client's own errors (:mod:`leapi.errors`), as they
are: code written against the client catches them unchanged. Airflow retries any failed task that has
retries left, which is right for most of them (an HTTP error after the client's retries, a rate limit
that outlasted its budget, a wait that timed out: the retry reconnects). A few no retry can fix: a
REJECTED request (other than for the rate limit), a refused API key, an expired result URL. At the task
boundary (:func:`fail_on_permanent_errors`, around every operator's ``execute`` and resume method) those
become ``AirflowFailException``, with the client's error chained as the cause, so Airflow fails the task
at once instead of spending its retries, as dbt Cloud's and Anthropic's providers fail a job that cannot
succeed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from airflow.sdk.exceptions import AirflowFailException

from leapi import errors

#: What to do in Airflow, added where it differs from the client's advice.
_AIRFLOW_ADVICE: dict[type[errors.LeapiError], str] = {
    errors.LeapiResultExpiredError: " In Airflow: clear the task that submitted the pipeline, then this task.",
}


class LeapiTriggerEventError(errors.LeapiError):
    """A deferred task resumed with an event that is not one :class:`LeapiPipelineTrigger` yields (a
    version skew, another trigger): it fails loudly rather than being taken for a success."""


def is_permanent(error: BaseException) -> bool:
    """Whether no retry of the task can fix ``error`` (the same request would fail the same way)."""
    if isinstance(error, errors.LeapiRejectedError):
        return not error.rate_limited
    return isinstance(error, (errors.LeapiAuthError, errors.LeapiResultExpiredError, LeapiTriggerEventError))


@contextlib.contextmanager
def fail_on_permanent_errors() -> Iterator[None]:
    """Turn a permanent client error (:func:`is_permanent`) into ``AirflowFailException`` (the error
    chained); every other error goes through unchanged, for Airflow to retry. Also a decorator."""
    try:
        yield
    except errors.LeapiError as exc:
        if not is_permanent(exc):
            raise
        advice = next((text for cls, text in _AIRFLOW_ADVICE.items() if isinstance(exc, cls)), "")
        raise AirflowFailException(f"{type(exc).__name__}: {exc}{advice}") from exc
