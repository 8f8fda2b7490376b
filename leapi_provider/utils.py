"""Small helpers shared by the provider's operators, sensor and trigger."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any


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
