"""Time as ``leapi-server`` reads it: one injectable clock, and the calendar arithmetic built on it.

Every component that stamps, expires or schedules something (store, temp store, dispatcher, webhook
sender, rate limiter) takes a :data:`Clock` instead of calling :func:`time.time`, so that tests of a
24 h temp URL or a 10 minute webhook retry move time forward instead of waiting for it.
"""

from __future__ import annotations

import calendar
import time
from collections.abc import Callable
from datetime import UTC, datetime

#: A callable returning the current time as Unix seconds (``time.time`` in production).
Clock = Callable[[], float]

SYSTEM_CLOCK: Clock = time.time


def month_period(now: float) -> tuple[str, float, float]:
    """(``YYYY-MM``, start, end) of the UTC calendar month holding ``now``: the quota period.

    :param now: Unix seconds.
    """
    moment = datetime.fromtimestamp(now, UTC)
    start = datetime(moment.year, moment.month, 1, tzinfo=UTC)
    days = calendar.monthrange(moment.year, moment.month)[1]
    end = start.timestamp() + days * 86400
    return f"{moment.year:04d}-{moment.month:02d}", start.timestamp(), end


def utc_text(ts: float) -> str:
    """``2021-04-06T11:22:57Z``: a moment in a human-facing message (REJECTED reasons)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))
