"""Reading a manifest: one Parquet file, a folder (recursively) or a glob, on any location."""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from leapi_provider.manifests.locations import Location, arrow_filesystem, resolve_location, uri_on
from leapi_provider.manifests.schemas import MANIFEST_SCHEMA, REQUIRED_COLUMNS, ManifestError

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

log = logging.getLogger(__name__)


_GLOB_CHARS = re.compile(r"[*?\[]")


def _hidden(name: str) -> bool:
    """Names every Parquet dataset reader skips: temporary files and metadata (``.x``, ``_x``)."""
    return name.startswith((".", "_"))


def manifest_files(location: Location) -> tuple[AbstractFileSystem, list[str]]:
    """The Parquet files a manifest location names, sorted (one file, a folder searched recursively, a glob).

    Hidden and ``_``-prefixed names are skipped in folders and globs, as Parquet dataset readers do.
    """
    fs, path = resolve_location(location)
    try:
        if _GLOB_CHARS.search(path):
            files = [p for p in sorted(fs.glob(path)) if not _hidden(p.rsplit("/", 1)[-1]) and fs.isfile(p)]
        elif fs.isdir(path):
            files = sorted(
                p
                for p in fs.find(path)
                if not any(_hidden(part) for part in p[len(path) :].split("/") if part)
            )
        elif fs.exists(path):
            files = [path]
        else:
            raise ManifestError(f"manifest {location!s}: no such file or folder")
    except ManifestError:
        raise
    except Exception as exc:  # every fsspec backend raises its own errors
        raise ManifestError(f"manifest {location!s}: cannot list it: {exc}") from exc
    if not files:
        raise ManifestError(f"manifest {location!s}: no Parquet file found")
    return fs, files


@dataclass(frozen=True)
class ManifestTable:
    """A manifest as read: its columns, plus the global row number and the file each row came from."""

    table: pa.Table
    files: list[str]
    file_of_row: pa.Array  # dictionary<int32, string>, one entry per row


def read_manifest(location: Location, *, extra_columns: Sequence[str] = ()) -> ManifestTable:
    """Read the manifest columns of every file at ``location`` (see :func:`manifest_files`).

    Only the manifest columns (and ``extra_columns`` if present) are read. Files may disagree on numeric
    widths (``int32`` here, ``int64`` there); their schemas are unified with permissive promotion.

    :raises ManifestError: nothing to read, a file that is not Parquet, incompatible schemas, or a required
        column missing.
    """
    fs, files = manifest_files(location)
    arrow_fs = arrow_filesystem(fs)
    schemas: list[pa.Schema] = []
    for path in files:
        try:
            with fs.open(path, "rb") as handle:
                schemas.append(pq.read_schema(handle))
        except Exception as exc:
            raise ManifestError(
                f"manifest file {uri_on(fs, path)} is not a readable Parquet file: {exc}"
            ) from exc
    try:
        schema = pa.unify_schemas(schemas, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise ManifestError(f"manifest {location!s}: its files have incompatible schemas: {exc}") from exc
    missing = [name for name in REQUIRED_COLUMNS if name not in schema.names]
    if missing:
        raise ManifestError(
            f"manifest {location!s} has no column {', '.join(repr(m) for m in missing)}; "
            f"required: {list(REQUIRED_COLUMNS)}; found: {schema.names}"
        )
    wanted = [n for n in (*MANIFEST_SCHEMA.names, *extra_columns) if n in schema.names]
    ignored = [n for n in schema.names if n not in wanted]
    if ignored:
        log.info("manifest %s: ignoring columns %s", location, ignored)
    tables: list[pa.Table] = []
    for path in files:
        try:
            dataset = ds.dataset(path, schema=schema, format="parquet", filesystem=arrow_fs)
            tables.append(dataset.to_table(columns=wanted))
        except Exception as exc:
            raise ManifestError(f"manifest file {uri_on(fs, path)} could not be read: {exc}") from exc
    table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
    lengths = np.array([t.num_rows for t in tables], dtype=np.int32)
    file_indices = np.repeat(np.arange(len(files), dtype=np.int32), lengths)
    file_of_row = pa.DictionaryArray.from_arrays(
        pa.array(file_indices, pa.int32()), pa.array([uri_on(fs, p) for p in files], pa.string())
    )
    return ManifestTable(table=table, files=[uri_on(fs, p) for p in files], file_of_row=file_of_row)
