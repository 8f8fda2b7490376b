"""What finalize keeps of a run's result rows while it streams them into the result table.

Counts by status and preset, errors grouped by reason, the first ``done`` rows of each preset (what the
contact sheet and the HTML report show) and the manifest row of every row (8 bytes each: the check that the
table has exactly one row per manifest row). The rows themselves are never held, so finalize's memory does
not grow with the catalog.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from leapi_provider.manifests import RESULT_SCHEMA, ResultStatus

#: Image ids kept as examples of each error reason.
EXAMPLES_PER_REASON = 5


@dataclass
class ErrorReason:
    """How many rows failed for one reason, and the first few of their image ids."""

    count: int = 0
    examples: list[str] = field(default_factory=list)


def first_done_per_preset(rows: pa.Table, count: int) -> pa.Table:
    """The first ``count`` ``done`` rows with an output of each preset, by ``image_id`` (presets in name
    order): all that the contact sheet and the report may pick, and so all a tally needs to keep."""
    done = rows.filter(
        pc.and_(pc.equal(rows["status"], ResultStatus.DONE.value), pc.is_valid(rows["output_uri"]))
    ).sort_by([("preset", "ascending"), ("image_id", "ascending")])
    presets = [preset for preset in pc.unique(done["preset"]).to_pylist() if preset is not None]
    return pa.concat_tables(
        [done.filter(pc.equal(done["preset"], preset)).slice(0, count) for preset in presets]
        or [done.slice(0, 0)]
    )


class RunTally:
    """The running totals of a run's result rows (:meth:`add` each part as it is written).

    :param picks_per_preset: ``done`` rows kept per preset for :meth:`picks`.
    """

    def __init__(self, *, picks_per_preset: int):
        self.picks_per_preset = picks_per_preset
        self.by_status_and_preset: Counter[tuple[str, str | None]] = Counter()
        self.errors: dict[str, ErrorReason] = {}
        self._manifest_rows: list[np.ndarray] = []
        self._picks = RESULT_SCHEMA.empty_table()

    def add(self, part: pa.Table) -> None:
        """Count a part of the result rows (conformed to :data:`~leapi_provider.manifests.RESULT_SCHEMA`)."""
        self._manifest_rows.append(part["manifest_row"].to_numpy())
        counts = part.group_by(["status", "preset"], use_threads=False).aggregate([("status", "count")])
        for status, preset, n in zip(
            counts["status"].to_pylist(),
            counts["preset"].to_pylist(),
            counts["status_count"].to_pylist(),
            strict=True,
        ):
            self.by_status_and_preset[(status, preset)] += n
        failed = part.filter(pc.is_valid(part["error"])).select(["image_id", "error"])
        for image_id, error in zip(failed["image_id"].to_pylist(), failed["error"].to_pylist(), strict=True):
            reason = self.errors.setdefault(error, ErrorReason())
            reason.count += 1
            if len(reason.examples) < EXAMPLES_PER_REASON:
                reason.examples.append(str(image_id))
        self._picks = first_done_per_preset(
            pa.concat_tables([self._picks, first_done_per_preset(part, self.picks_per_preset)]),
            self.picks_per_preset,
        )

    @property
    def rows(self) -> int:
        return sum(self.by_status_and_preset.values())

    @property
    def by_status(self) -> dict[str, int]:
        totals: Counter[str] = Counter()
        for (status, _), n in self.by_status_and_preset.items():
            totals[status] += n
        return dict(sorted(totals.items()))

    def mismatch(self, manifest_rows: int) -> str | None:
        """Why the rows are not exactly one per manifest row (``None`` when they are)."""
        seen = np.concatenate(self._manifest_rows) if self._manifest_rows else np.empty(0, np.int64)
        distinct = len(np.unique(seen))
        if len(seen) == manifest_rows and distinct == manifest_rows:
            return None
        return (
            f"result rows do not match the manifest: {len(seen)} rows for {manifest_rows} manifest rows "
            f"({len(seen) - distinct} duplicated)"
        )

    def picks(self) -> pa.Table:
        """The first :attr:`picks_per_preset` ``done`` rows of each preset, by preset and ``image_id``."""
        return self._picks

    def ranked_errors(self) -> list[tuple[str, ErrorReason]]:
        """Error reasons, the most frequent first (then by text)."""
        return sorted(self.errors.items(), key=lambda item: (-item[1].count, item[0]))

    def summary(self, *, credits_used: int) -> dict[str, Any]:
        """The run's summary (the finalize task's return value and the report's counts)."""
        return {
            "rows": self.rows,
            "by_status": self.by_status,
            "by_status_and_preset": [
                [status, preset, n]
                for (status, preset), n in sorted(
                    self.by_status_and_preset.items(), key=lambda i: (i[0][0], i[0][1] or "")
                )
            ],
            "credits_used": credits_used,
        }
