"""Copying the result images of a DONE pipeline: the parts the operators, the S3 transfer and the catalog share.

What a result is, its deterministic name, its expiry and its verified download live in the ``leapi``
client (:mod:`leapi.results`, :mod:`leapi.download`); this module adds the Airflow side: a spooled
download ready to copy anywhere, the ``files`` XCom records, and failing after a partial copy.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterator
from typing import IO, Any

from leapi.download import VerifiedResult
from leapi.errors import LeapiResultMissingError
from leapi.results import ResultFile
from leapi_provider.hooks.leapi import LeapiHook

#: Results up to this size stay in memory while being verified; larger ones spill to a temp file.
SPOOL_MAX_BYTES = 8 * 1024 * 1024


@contextlib.contextmanager
def spooled_download(hook: LeapiHook, result: ResultFile) -> Iterator[tuple[VerifiedResult, IO[bytes]]]:
    """Download and verify ``result`` into a spooled temp file (memory up to 8 MiB, then disk).

    Yields the verification and the file, rewound, ready to be copied to its destination.
    """
    with tempfile.SpooledTemporaryFile(max_size=SPOOL_MAX_BYTES) as spool:
        verified = hook.download_verified(result, spool)
        spool.seek(0)
        yield verified, spool


def file_record(
    uri: str, verified: VerifiedResult | None, result: ResultFile, **known: Any
) -> dict[str, Any]:
    """One entry of the ``files`` XCom of a copy: where a result went and what it is.

    ``verified`` is ``None`` when an existing copy was kept; ``known`` then gives its ``sha256``/``bytes``.
    """
    return {
        "uri": uri,
        "pipeline_id": result.pipeline_id,
        "index": result.index,
        "source_url": result.source_url,
        "preset": result.preset,
        "sha256": verified.sha256 if verified else known.get("sha256"),
        "bytes": verified.byte_count if verified else known.get("bytes"),
        "width": verified.width if verified else result.width,
        "height": verified.height if verified else result.height,
        "mime": verified.mime if verified else result.mime,
        "skipped_existing": verified is None,
    }


def raise_for_failed_results(
    pipeline_id: int, failed: dict[int, str], *, allow_partial: bool, log: logging.Logger | Any
) -> None:
    """Fail (after the good results were copied) when some images of a DONE pipeline produced no output."""
    if not failed:
        return
    text = "; ".join(f"result {index}: {reason}" for index, reason in sorted(failed.items())[:10])
    message = f"Pipeline {pipeline_id}: {len(failed)} image(s) produced no output ({text})"
    if allow_partial:
        log.warning("%s; copied the others (allow_partial=True)", message)
        return
    raise LeapiResultMissingError(message, pipeline_id=pipeline_id, failed_indexes=sorted(failed))
