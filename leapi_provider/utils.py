"""Small helpers shared by the provider's operators, sensor and trigger."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

#: Polls start this soon after a submit (most small images finish in seconds) ...
DEFAULT_INITIAL_POLL_INTERVAL_S = 2.0
#: ... and each later gap is this fraction of the time already waited (up to the caller's ``poll_interval``),
#: so a wait ends at most ~10% after the pipelines did, while a long wait still polls rarely.
POLL_GAP_FRACTION = 0.1


def poll_schedule(poll_interval: float, initial: float = DEFAULT_INITIAL_POLL_INTERVAL_S) -> Iterator[float]:
    """Gaps between polls: ``initial`` at first, then a tenth of the time waited so far, at most ``poll_interval``.

    A doubling schedule would overshoot a 30 s batch by up to its longest gap; this one by about 10%.

    >>> import itertools
    >>> [round(gap, 2) for gap in itertools.islice(poll_schedule(3.0, 2.0), 14)]
    [2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.2, 2.42, 2.66]
    """
    waited = 0.0
    while True:
        gap = min(poll_interval, max(initial, waited * POLL_GAP_FRACTION))
        yield gap
        waited += gap


def coerce_pipeline_ids(value: Any) -> list[int]:
    """Pipeline ids from what a template may render: ``7``, ``"7"``, ``"[7, 8]"``, ``"7,8"``, ``[7, "8"]``.

    Duplicates are dropped, order is kept. Raises ``ValueError`` naming the bad value.
    """
    items: Iterable[Any]
    if isinstance(value, bool):
        raise ValueError(f"not a pipeline id: {value!r}")  # noqa: TRY004 - a bad rendered value
    if isinstance(value, int):
        items = [value]
    elif isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                items = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ValueError(f"pipeline ids are not a JSON list: {value!r}") from exc
        else:
            items = [part for part in text.replace(";", ",").split(",") if part.strip()]
    elif isinstance(value, Iterable):
        items = value
    else:
        raise ValueError(f"not a pipeline id or a list of them: {value!r}")  # noqa: TRY004
    ids: list[int] = []
    for item in items:
        if isinstance(item, bool):
            raise ValueError(f"not a pipeline id: {item!r}")  # noqa: TRY004
        try:
            pipeline_id = int(str(item).strip())
        except ValueError as exc:
            raise ValueError(f"not a pipeline id: {item!r}") from exc
        if pipeline_id not in ids:
            ids.append(pipeline_id)
    if not ids:
        raise ValueError(f"no pipeline id in {value!r}")
    return ids


def contains_template(value: Any) -> bool:
    """Whether ``value`` (nested lists/dicts included) still holds Jinja syntax to render at run time."""
    if isinstance(value, str):
        return "{{" in value or "{%" in value
    if isinstance(value, dict):
        return any(contains_template(k) or contains_template(v) for k, v in value.items())
    if isinstance(value, (list, tuple, set)):
        return any(contains_template(v) for v in value)
    return False
