"""Catalog manifests and result tables: the data side of the catalog DAGs (no HTTP, no Airflow at import).

A **manifest** is Parquet (one file, a folder, or a glob; local or any fsspec / ``ObjectStoragePath``
location), one row per image, with the columns of :data:`MANIFEST_SCHEMA`. :func:`validate_manifest`
splits it into valid rows (each with its effective operation and a stable hash of it) and a rejects table
with one reason per bad row; :func:`plan_batches` groups the valid rows by operation and cuts them into
pipelines and mapped batches. A **result table** (:data:`RESULT_SCHEMA`) has one row per manifest row and is
written partitioned by run date and preset with :func:`write_result_table`, atomically per file.

Decisions (documented here once, referenced from ``docs/catalog.md``):

* **Types.** Numeric option columns may be integer, floating, decimal or string typed; each value is then
  validated by the preset's pydantic model from :mod:`leapi.models` (the single source of ranges),
  so ``1200.0`` is accepted as ``1200`` and ``12.5``, ``"abc"`` or ``50000`` are rejected with the model's
  message. Any other column type (bool, timestamp, nested) rejects every row that sets it. ``image_id`` may
  be string or integer typed (integers are used as their decimal text). A float NaN counts as null, as
  pandas writes missing floats that way.
* **Null options** mean "not set": the DAG's per-preset defaults apply, then the service's own defaults.
* **Presets** are ``marketplace``, ``realestate`` and ``print``, case-insensitive, with or without the
  ``preset/`` prefix of the wire ``op``.
* **Duplicate image_id.** Among rows that pass every other check, the first occurrence in manifest order
  (files in path order, rows in file order) is kept; every later occurrence is rejected as
  ``duplicate_image_id`` naming the kept row. Rows already rejected for another reason do not claim an id,
  so a broken first row does not block a good second one.
* **Effective operation** is the wire form (:meth:`~leapi.models._PresetOperation.to_wire`) of the
  preset model built from the DAG's per-preset defaults overlaid with the row's non-null options. Its hash is
  the sha256 of its canonical JSON (sorted keys, compact separators): the same operation always hashes the
  same, whatever spelling the manifest used (``jpg`` / ``JPEG``, ``1200`` / ``1200.0``).
* **Planning.** Rows with the same operation are cut into pipelines of at most ``urls_per_pipeline`` URLs
  (the user's cap is never exceeded); consecutive pipelines are packed into batches (one mapped task and one
  trigger each) of ``pipelines_per_batch`` pipelines, sized up so that there are at most ``max_batches``.
* **Atomic writes.** Each file is written under a hidden temporary name (``.`` prefix: every Parquet
  dataset reader skips it) in its final folder, then moved to its final name. On a local disk that is an
  atomic rename; on object stores the move is a server-side copy, which publishes the object whole.
  File names derive from the DAG run id, so a retried write replaces its own files instead of adding rows.
  A commit marker (``_commits/<run>.json``, listing the files) is written last.
"""

from __future__ import annotations

import enum
import hashlib
import json
import logging
import os
import re
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from pydantic import ValidationError

from leapi.models import PRESET_OPS, PresetOperation
from leapi_provider.catalog.settings import DEFAULT_URLS_PER_PIPELINE

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------------
# Schemas
# --------------------------------------------------------------------------------------------------

#: Short preset names accepted in the ``preset`` column, mapped to the wire ``op``.
PRESETS: dict[str, str] = {op.removeprefix("preset/"): op for op in PRESET_OPS}

#: Option columns, in wire order, that a manifest row may set (null = not set).
OPTION_COLUMNS: tuple[str, ...] = (
    "width",
    "height",
    "restoration_level",
    "lightai_intensity",
    "toneai_intensity",
    "image_format",
    "quality",
    "dpi",
)
_STRING_OPTIONS = frozenset({"image_format"})

#: The published manifest schema. Only ``image_id``, ``source_url`` and ``preset`` are required columns;
#: option columns may be absent; ``attributes`` (free, any type) is carried through to the outputs; any
#: other column is ignored.
MANIFEST_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("source_url", pa.string(), nullable=False),
        pa.field("preset", pa.string(), nullable=False),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("restoration_level", pa.int32()),
        pa.field("lightai_intensity", pa.float64()),
        pa.field("toneai_intensity", pa.float64()),
        pa.field("image_format", pa.string()),
        pa.field("quality", pa.int32()),
        pa.field("dpi", pa.int32()),
        pa.field("attributes", pa.map_(pa.string(), pa.string())),
    ],
    metadata={b"leapi.manifest.version": b"1"},
)
REQUIRED_COLUMNS: tuple[str, ...] = ("image_id", "source_url", "preset")

_DICT_STRING = pa.dictionary(pa.int32(), pa.string())

#: Valid rows, as :func:`validate_manifest` returns them (``attributes`` is appended when the manifest has
#: it). ``preset`` is the short name; ``operation_json`` the canonical wire JSON of the effective operation.
VALID_ROWS_SCHEMA = pa.schema(
    [
        pa.field("manifest_row", pa.int64(), nullable=False),
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("source_url", pa.string(), nullable=False),
        pa.field("preset", _DICT_STRING, nullable=False),
        pa.field("operation_json", _DICT_STRING, nullable=False),
        pa.field("operation_hash", _DICT_STRING, nullable=False),
    ]
)


class RejectCode(str, enum.Enum):
    """Why a manifest row was rejected (the first failing check; ``reason`` lists every failure)."""

    MISSING_IMAGE_ID = "missing_image_id"
    WRONG_TYPE = "wrong_type"
    MISSING_SOURCE_URL = "missing_source_url"
    INVALID_SOURCE_URL = "invalid_source_url"
    MISSING_PRESET = "missing_preset"
    UNKNOWN_PRESET = "unknown_preset"
    INVALID_OPTION = "invalid_option"
    DUPLICATE_IMAGE_ID = "duplicate_image_id"


REJECTS_SCHEMA = pa.schema(
    [
        pa.field("manifest_row", pa.int64(), nullable=False),
        pa.field("source_file", pa.string()),
        pa.field("image_id", pa.string()),
        pa.field("source_url", pa.string()),
        pa.field("preset", pa.string()),
        pa.field("reject_code", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
    ]
)


class ResultStatus(str, enum.Enum):
    """The terminal status of one manifest row in a result table: exactly one per row and run."""

    DONE = "done"
    ERROR = "error"
    REJECTED_ROW = "rejected_row"
    SKIPPED_UNCHANGED = "skipped_unchanged"
    DEFERRED_QUOTA = "deferred_quota"


_TS = pa.timestamp("us", tz="UTC")
#: Partition value for result rows that have no (known) preset: rows rejected before one was known.
UNKNOWN_PRESET_PARTITION = "__unknown__"

#: Partition columns of a result table (hive layout ``run_date=YYYY-MM-DD/preset=NAME/``).
RESULT_PARTITIONING = pa.schema([pa.field("run_date", pa.string()), pa.field("preset", pa.string())])

#: The published result table schema: one row per manifest row and run. ``run_date`` and ``preset`` live
#: in the partition path (readers restore them); every other column is in the files.
RESULT_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string()),
        pa.field("manifest_row", pa.int64()),
        pa.field("source_url", pa.string()),
        pa.field("preset", pa.string()),
        pa.field("operation_json", pa.string()),
        pa.field("operation_hash", pa.string()),
        pa.field("pipeline_id", pa.int64()),
        pa.field("status", pa.string(), nullable=False),
        pa.field("error", pa.string()),
        pa.field("input_width", pa.int32()),
        pa.field("input_height", pa.int32()),
        pa.field("input_format", pa.string()),
        pa.field("input_mps", pa.float64()),
        pa.field("input_bytes", pa.int64()),
        pa.field("output_width", pa.int32()),
        pa.field("output_height", pa.int32()),
        pa.field("output_format", pa.string()),
        pa.field("output_mps", pa.float64()),
        pa.field("output_bytes", pa.int64()),
        pa.field("output_uri", pa.string()),
        pa.field("output_sha256", pa.string()),
        pa.field("source_fingerprint", pa.string()),
        pa.field("submitted_at", _TS),
        pa.field("started_at", _TS),
        pa.field("finished_at", _TS),
        pa.field("dag_run_id", pa.string()),
        #: The file stem of the run's part files (stable across re-runs of one logical run).
        pa.field("run_key", pa.string()),
        pa.field("run_date", pa.string()),
        pa.field("recorded_at", _TS),
    ],
    metadata={b"leapi.result.version": b"1"},
)
_RESULT_FILE_SCHEMA = pa.schema([f for f in RESULT_SCHEMA if f.name not in RESULT_PARTITIONING.names])


class ManifestError(ValueError):
    """The manifest cannot be used at all: unreadable, not Parquet, missing a column, or no valid row."""


# --------------------------------------------------------------------------------------------------
# Locations: local paths, URLs and ObjectStoragePath alike
# --------------------------------------------------------------------------------------------------

Location = Any  # str | os.PathLike | airflow.sdk.ObjectStoragePath (anything with ``.fs`` and ``.path``)
_GLOB_CHARS = re.compile(r"[*?\[]")


def resolve_location(location: Location) -> tuple[AbstractFileSystem, str]:
    """The fsspec filesystem and the path on it, for a local path, a URL or an ``ObjectStoragePath``.

    An ``ObjectStoragePath`` brings its own filesystem (with its Airflow connection); a plain URL uses fsspec's
    default credentials for its scheme.
    """
    fs = getattr(location, "fs", None)
    if fs is not None and hasattr(location, "path"):
        return fs, str(location.path)
    import fsspec.core

    text = os.fspath(location)
    if "://" not in text:
        text = os.path.abspath(text)
    fs, path = fsspec.core.url_to_fs(text)
    return fs, path


def _is_local(fs: AbstractFileSystem) -> bool:
    from fsspec.implementations.local import LocalFileSystem

    return isinstance(fs, LocalFileSystem)


def _arrow_fs(fs: AbstractFileSystem) -> Any:
    """pyarrow's native local filesystem where possible (faster), fsspec's otherwise."""
    if _is_local(fs):
        import pyarrow.fs as pafs

        return pafs.LocalFileSystem()
    return fs


def _uri(fs: AbstractFileSystem, path: str) -> str:
    if _is_local(fs):
        return path
    return fs.unstrip_protocol(path)


# --------------------------------------------------------------------------------------------------
# Reading manifests
# --------------------------------------------------------------------------------------------------


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
    arrow_fs = _arrow_fs(fs)
    schemas: list[pa.Schema] = []
    for path in files:
        try:
            with fs.open(path, "rb") as handle:
                schemas.append(pq.read_schema(handle))
        except Exception as exc:
            raise ManifestError(
                f"manifest file {_uri(fs, path)} is not a readable Parquet file: {exc}"
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
            raise ManifestError(f"manifest file {_uri(fs, path)} could not be read: {exc}") from exc
    table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
    lengths = np.array([t.num_rows for t in tables], dtype=np.int32)
    file_indices = np.repeat(np.arange(len(files), dtype=np.int32), lengths)
    file_of_row = pa.DictionaryArray.from_arrays(
        pa.array(file_indices, pa.int32()), pa.array([_uri(fs, p) for p in files], pa.string())
    )
    return ManifestTable(table=table, files=[_uri(fs, p) for p in files], file_of_row=file_of_row)


# --------------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ManifestValidation:
    """The outcome of :func:`validate_manifest`: valid rows (with operations), rejects, and totals."""

    valid: pa.Table
    rejects: pa.Table
    total_rows: int
    files: list[str] = field(default_factory=list)

    @property
    def reject_counts(self) -> dict[str, int]:
        if self.rejects.num_rows == 0:
            return {}
        counts = self.rejects.group_by("reject_code").aggregate([("reject_code", "count")])
        return dict(
            zip(counts["reject_code"].to_pylist(), counts["reject_code_count"].to_pylist(), strict=True)
        )

    def require_valid_rows(self, location: Location = "manifest") -> None:
        """:raises ManifestError: when not a single row is valid, with the reasons that rejected them."""
        if self.valid.num_rows:
            return
        if self.total_rows == 0:
            raise ManifestError(f"{location!s}: the manifest has no rows")
        counts = ", ".join(
            f"{n} x {code}" for code, n in sorted(self.reject_counts.items(), key=lambda i: -i[1])
        )
        examples = "; ".join(
            f"row {row}: {reason}"
            for row, reason in zip(
                self.rejects["manifest_row"][:3].to_pylist(),
                self.rejects["reason"][:3].to_pylist(),
                strict=True,
            )
        )
        raise ManifestError(
            f"{location!s}: none of the {self.total_rows} manifest rows is valid ({counts}). First rejects: "
            f"{examples}"
        )


_CANONICAL_JSON = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def canonical_operation_json(operation: PresetOperation) -> str:
    """The canonical JSON of an operation's wire form: sorted keys, no whitespace."""
    return _CANONICAL_JSON.encode(operation.to_wire())


def operation_hash(operation_json: str) -> str:
    """The stable hash of an operation: sha256 (hex) of :func:`canonical_operation_json`."""
    return hashlib.sha256(operation_json.encode()).hexdigest()


def build_operation(
    preset: str, options: Mapping[str, Any], defaults: Mapping[str, Any] | None = None
) -> PresetOperation:
    """The effective operation of one row: the preset model over ``defaults`` overlaid with ``options``.

    Null options are left out (not set). :raises ValidationError: from the preset model.
    """
    op = PRESETS[preset]
    values: dict[str, Any] = {k: v for k, v in (defaults or {}).items() if v is not None}
    values.update({k: v for k, v in options.items() if v is not None})
    values["op"] = op
    return cast("PresetOperation", PRESET_OPS[op].model_validate(values))  # (the class of that op)


def _normalize_preset_name(name: str) -> str:
    return name.strip().lower().removeprefix("preset/")


def normalize_preset_defaults(defaults: Mapping[str, Mapping[str, Any]] | None) -> dict[str, dict[str, Any]]:
    """Validate per-preset default options (as DAG params give them), keyed by short preset name.

    :raises ValueError: an unknown preset or an option its model rejects, before any row is looked at.
    """
    normalized: dict[str, dict[str, Any]] = {}
    for name, options in (defaults or {}).items():
        preset = _normalize_preset_name(str(name))
        if preset not in PRESETS:
            raise ValueError(f"preset defaults: unknown preset {name!r}; expected one of {sorted(PRESETS)}")
        opts = {k: v for k, v in dict(options or {}).items() if k != "op"}
        try:
            build_operation(preset, opts)
        except ValidationError as exc:
            raise ValueError(f"preset defaults for {preset!r}: {_format_errors(exc)}") from exc
        normalized[preset] = opts
    return normalized


def _format_errors(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False):
        where = ".".join(str(p) for p in err["loc"]) or "operation"
        if err["type"] == "extra_forbidden":
            parts.append(f"{where} is not an option of this preset")
        else:
            parts.append(f"{where}: {err['msg']} (got {err.get('input')!r})")
    return "; ".join(parts)


def _as_plain(column: pa.ChunkedArray | pa.Array) -> pa.Array:
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if pa.types.is_dictionary(array.type):
        array = array.cast(array.type.value_type)
    return array


def _dictionary(column: pa.ChunkedArray | pa.Array) -> pa.DictionaryArray:
    """A column as one dictionary array without nulls in its indices' way (encoding plain columns)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.unify_dictionaries() if pa.types.is_dictionary(column.type) else column
        column = column.combine_chunks()
    if not pa.types.is_dictionary(column.type):
        column = pc.dictionary_encode(column)
    return column


def _is_stringlike(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


def _dense_ids(arrays: Sequence[pa.Array]) -> np.ndarray:
    """One int64 id per row for the combination of values of ``arrays`` (nulls are a value).

    Ids are dense and numbered in order of first appearance. Built by dictionary-encoding column by column and
    re-densifying the combined key each time, so it never overflows and stays vectorised.
    """
    ids: np.ndarray | None = None
    for array in arrays:
        if not pa.types.is_dictionary(array.type):
            array = pc.dictionary_encode(array, null_encoding="encode")
        # An already-encoded array may hold null indices: they become one more value.
        size = len(array.dictionary) + 1
        idx = array.indices.fill_null(size - 1).to_numpy(zero_copy_only=False).astype(np.int64)
        if ids is None:
            ids = idx
            continue
        combined = ids * size + idx
        ids = pc.dictionary_encode(pa.array(combined)).indices.to_numpy(zero_copy_only=False).astype(np.int64)
    assert ids is not None
    return ids


def _first_rows(ids: np.ndarray) -> np.ndarray:
    """For dense ids in order of first appearance, the first row of each id."""
    _, first = np.unique(ids, return_index=True)
    return first


def _mask(array: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A boolean pyarrow array as numpy, null counting as false."""
    return np.asarray(pc.fill_null(array, False).to_numpy(zero_copy_only=False), dtype=bool)


@dataclass(frozen=True)
class _Check:
    """One row check: where it fails, and how to word the reason for some failing rows."""

    code: RejectCode
    fails: np.ndarray
    reason: str | Callable[[pa.Array], pa.Array]  # text, or rows -> one reason per row

    def reasons(self, rows: pa.Array) -> pa.Array:
        if isinstance(self.reason, str):
            return pa.array([self.reason] * len(rows), pa.string())
        return self.reason(rows)


def _string_column(table: pa.Table, name: str, *, allow_integers: bool) -> tuple[pa.Array, list[_Check]]:
    """A required string column as trimmed strings (null where unusable), and its missing / wrong-type checks."""
    raw = _as_plain(table[name])
    usable = (
        _is_stringlike(raw.type)
        or (allow_integers and pa.types.is_integer(raw.type))
        or pa.types.is_null(raw.type)
    )
    if usable:
        values = pc.utf8_trim_whitespace(raw.cast(pa.string()))
        missing = ~_mask(pc.greater(pc.binary_length(values), 0))
        return values, [_Check(_MISSING_CODES[name], missing, f"missing {name}")]
    expected = "a string or integer" if allow_integers else "a string"
    present = _mask(pc.is_valid(raw))
    return pa.nulls(len(raw), pa.string()), [
        _Check(_MISSING_CODES[name], ~present, f"missing {name}"),
        _Check(RejectCode.WRONG_TYPE, present, f"{name} must be {expected} (the column is {raw.type})"),
    ]


_MISSING_CODES = {
    "image_id": RejectCode.MISSING_IMAGE_ID,
    "source_url": RejectCode.MISSING_SOURCE_URL,
    "preset": RejectCode.MISSING_PRESET,
}
_URL_PATTERN = r"^https?://[^/\s?#]+([/?#]\S*)?$"
_NUMERIC_OK = (pa.types.is_integer, pa.types.is_floating, pa.types.is_decimal)


def _option_column(table: pa.Table, name: str) -> tuple[pa.Array, list[_Check]]:
    """An option column's values to validate (all null when absent), and its wrong-type check."""
    n = table.num_rows
    if name not in table.column_names:
        return pa.nulls(n), []
    raw = _as_plain(table[name])
    if pa.types.is_floating(raw.type):
        raw = pc.if_else(pc.is_nan(raw), pa.scalar(None, raw.type), raw)
    accepted = (
        pa.types.is_null(raw.type)
        or _is_stringlike(raw.type)
        or (name not in _STRING_OPTIONS and any(check(raw.type) for check in _NUMERIC_OK))
    )
    if accepted:
        return raw, []
    expected = "a string" if name in _STRING_OPTIONS else "a number"
    check = _Check(
        RejectCode.WRONG_TYPE,
        _mask(pc.is_valid(raw)),
        f"{name} must be {expected} (the column is {raw.type})",
    )
    return pa.nulls(n), [check]


def _normalized_presets(raw: pa.Array) -> pa.DictionaryArray:
    """Short preset names (null where missing or unknown), normalising each distinct spelling once."""
    encoded = pc.dictionary_encode(raw)
    names = [None if v is None else _normalize_preset_name(v) for v in encoded.dictionary.to_pylist()]
    short = sorted(PRESETS)
    lookup = np.array([short.index(v) if v in PRESETS else -1 for v in names] or [-1], dtype=np.int32)
    codes = lookup[encoded.indices.fill_null(0).to_numpy(zero_copy_only=False)]
    known = (codes >= 0) & _mask(encoded.indices.is_valid())
    return pa.DictionaryArray.from_arrays(
        pa.array(codes, pa.int32(), mask=~known), pa.array(short, pa.string())
    )


def validate_manifest(
    manifest: ManifestTable | pa.Table,
    *,
    preset_defaults: Mapping[str, Mapping[str, Any]] | None = None,
) -> ManifestValidation:
    """Split a manifest into valid rows and rejects (with every reason of each rejected row), vectorised.

    Options are validated by the preset models once per distinct combination of values (catalogs repeat a
    handful of combinations, so a million rows cost a handful of model validations). Reasons are worded
    only for the rows that fail.

    :param manifest: from :func:`read_manifest`, or a table with the manifest columns.
    :param preset_defaults: per-preset default options (short preset name -> options), overlaid by rows.
    :raises ManifestError: a required column is missing.
    :raises ValueError: ``preset_defaults`` names an unknown preset or an invalid option.
    """
    if isinstance(manifest, pa.Table):
        manifest = ManifestTable(
            table=manifest, files=[], file_of_row=pa.nulls(manifest.num_rows, _DICT_STRING)
        )
    table = manifest.table
    missing_columns = [name for name in REQUIRED_COLUMNS if name not in table.column_names]
    if missing_columns:
        raise ManifestError(f"the manifest has no column {missing_columns}; found: {table.column_names}")
    defaults = normalize_preset_defaults(preset_defaults)
    n = table.num_rows

    image_id, id_checks = _string_column(table, "image_id", allow_integers=True)
    url, url_checks = _string_column(table, "source_url", allow_integers=False)
    preset_raw, preset_checks = _string_column(table, "preset", allow_integers=False)
    url_present = ~url_checks[0].fails
    url_invalid = url_present & ~_mask(pc.match_substring_regex(url, _URL_PATTERN, ignore_case=True))
    preset = _normalized_presets(preset_raw)
    preset_unknown = ~preset_checks[0].fails & ~_mask(preset.is_valid())

    # Options: validated by the models once per distinct (preset, options) combination.
    option_values: list[pa.Array] = []
    option_checks: list[_Check] = []
    for name in OPTION_COLUMNS:
        values, column_checks = _option_column(table, name)
        option_values.append(values)
        option_checks.extend(column_checks)
    combo_ids = _dense_ids([preset, *option_values])
    first = pa.array(_first_rows(combo_ids))
    combo_preset = preset.take(first).to_pylist()
    combo_options = pa.Table.from_arrays([v.take(first) for v in option_values], names=list(OPTION_COLUMNS))
    # Distinct effective operations (several spellings may give the same one), and each combination's.
    operation_texts: dict[str, int] = {}
    combo_operation_list: list[int] = []
    combo_error: list[str | None] = []
    for name, options in zip(combo_preset, combo_options.to_pylist(), strict=True):
        error, index = None, -1
        if name is not None:  # missing and unknown presets are reported as such
            try:
                operation = build_operation(name, options, defaults.get(name))
            except ValidationError as exc:
                error = _format_errors(exc)
            else:
                index = operation_texts.setdefault(canonical_operation_json(operation), len(operation_texts))
        combo_operation_list.append(index)
        combo_error.append(error)
    combo_operation = np.array(combo_operation_list, dtype=np.int32)
    combo_errors = pa.array(combo_error, pa.string())
    option_invalid = _mask(combo_errors.is_valid())[combo_ids]

    unknown_suffix = f"' (expected one of {', '.join(sorted(PRESETS))})"
    checks: list[_Check] = [
        *id_checks,
        *url_checks,
        *preset_checks,
        *option_checks,
        _Check(
            RejectCode.INVALID_SOURCE_URL,
            url_invalid,
            lambda rows: pc.binary_join_element_wise(
                "source_url is not an http(s) URL: ", pc.utf8_slice_codeunits(url.take(rows), 0, 200), ""
            ),
        ),
        _Check(
            RejectCode.UNKNOWN_PRESET,
            preset_unknown,
            lambda rows: pc.binary_join_element_wise(
                "unknown preset '", pc.utf8_slice_codeunits(preset_raw.take(rows), 0, 100), unknown_suffix, ""
            ),
        ),
        _Check(
            RejectCode.INVALID_OPTION,
            option_invalid,
            lambda rows: combo_errors.take(pa.array(combo_ids[rows.to_numpy()])),
        ),
    ]
    fails = np.zeros(n, dtype=bool)
    for check in checks:
        fails |= check.fails

    # Duplicates among rows that pass everything else: the first keeps the id.
    passing_rows = np.flatnonzero(~fails)
    duplicate_of = np.full(n, -1, dtype=np.int64)
    if len(passing_rows):
        passing_ids = pc.dictionary_encode(image_id.take(pa.array(passing_rows))).indices
        groups = passing_ids.to_numpy(zero_copy_only=False).astype(np.int64)
        kept_row = passing_rows[_first_rows(groups)][groups]
        is_duplicate = kept_row != passing_rows
        duplicate_of[passing_rows[is_duplicate]] = kept_row[is_duplicate]
    duplicates = duplicate_of >= 0
    checks.append(
        _Check(
            RejectCode.DUPLICATE_IMAGE_ID,
            duplicates,
            lambda rows: pc.binary_join_element_wise(
                "duplicate image_id (kept manifest row ",
                pa.array(duplicate_of[rows.to_numpy()]).cast(pa.string()),
                ")",
                "",
            ),
        )
    )
    fails |= duplicates

    # Reasons, worded for the failing rows only: every failed check, in order; the code is the first's.
    rejected_rows = np.flatnonzero(fails)
    rows = pa.array(rejected_rows, pa.int64())
    reasons = pa.nulls(len(rows), pa.string())
    first_code = np.full(len(rows), len(checks), dtype=np.int64)
    for position, check in enumerate(checks):
        failing = check.fails[rejected_rows]
        if not failing.any():
            continue
        first_code = np.where(failing & (first_code == len(checks)), position, first_code)
        reason = pc.if_else(pa.array(failing), check.reasons(rows), pa.scalar(None, pa.string()))
        # (binary_join_element_wise's null_handling="skip" drops rows in pyarrow 26; join pairwise instead.)
        reasons = pc.coalesce(pc.binary_join_element_wise(reasons, reason, "; "), reasons, reason)
    code_names = np.array([check.code.value for check in checks], dtype=object)
    rejects = pa.Table.from_arrays(
        [
            rows,
            manifest.file_of_row.take(rows).cast(pa.string()),
            _display_strings(table["image_id"], rows),
            _display_strings(table["source_url"], rows),
            _display_strings(table["preset"], rows),
            pa.array(code_names[first_code] if len(rows) else [], pa.string()),
            reasons,
        ],
        schema=REJECTS_SCHEMA,
    )

    row_operation = combo_operation[combo_ids]
    operation_indices = pa.array(row_operation, pa.int32(), mask=row_operation < 0)
    texts = pa.array(list(operation_texts), pa.string())
    hashes = pa.array([operation_hash(t) for t in operation_texts], pa.string())
    valid_columns = {
        "manifest_row": pa.array(np.arange(n, dtype=np.int64)),
        "image_id": image_id,
        "source_url": url,
        "preset": preset,
        "operation_json": pa.DictionaryArray.from_arrays(operation_indices, texts),
        "operation_hash": pa.DictionaryArray.from_arrays(operation_indices, hashes),
    }
    schema = VALID_ROWS_SCHEMA
    if "attributes" in table.column_names:
        valid_columns["attributes"] = _as_plain(table["attributes"])
        schema = schema.append(pa.field("attributes", valid_columns["attributes"].type))
    valid = pa.Table.from_pydict(valid_columns).filter(pa.array(~fails)).cast(schema)
    return ManifestValidation(valid=valid, rejects=rejects, total_rows=n, files=list(manifest.files))


def _display_strings(column: pa.ChunkedArray, rows: pa.Array) -> pa.Array:
    """Some rows of a column as text for the rejects table, whatever its type (else null)."""
    array = _as_plain(column.take(rows))
    try:
        return pc.utf8_slice_codeunits(array.cast(pa.string()), 0, 2000)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return pa.nulls(len(array), pa.string())


# --------------------------------------------------------------------------------------------------
# Planning
# --------------------------------------------------------------------------------------------------

PLAN_SCHEMA = pa.schema(
    [
        *VALID_ROWS_SCHEMA,
        pa.field("pipeline_index", pa.int64(), nullable=False),
        pa.field("batch_index", pa.int32(), nullable=False),
    ]
)


@dataclass(frozen=True)
class Plan:
    """Valid rows with the pipeline and batch each goes to, sorted by batch, pipeline, manifest row."""

    table: pa.Table
    urls_per_pipeline: int
    pipelines_per_batch: int
    num_pipelines: int
    num_batches: int
    num_operations: int

    def batch(self, index: int) -> pa.Table:
        """The rows of one batch (contiguous in :attr:`table`)."""
        batch_index = self.table["batch_index"].to_numpy()
        start, stop = np.searchsorted(batch_index, [index, index + 1])
        return self.table.slice(int(start), int(stop - start))

    def batches(self) -> Iterable[tuple[int, pa.Table]]:
        batch_index = self.table["batch_index"].to_numpy()
        bounds = np.searchsorted(batch_index, np.arange(self.num_batches + 1))
        for index in range(self.num_batches):
            yield index, self.table.slice(int(bounds[index]), int(bounds[index + 1] - bounds[index]))


def plan_batches(
    valid: pa.Table, *, urls_per_pipeline: int = DEFAULT_URLS_PER_PIPELINE, max_batches: int
) -> Plan:
    """Group valid rows by operation, cut each group into pipelines, and pack pipelines into batches.

    A pipeline carries at most ``urls_per_pipeline`` URLs of one operation (one POST, one credit per URL).
    Consecutive pipelines are packed into batches, the unit of one mapped task and one trigger: as many per
    batch as needed to keep the number of batches within ``max_batches`` (Airflow's ``[core]
    max_map_length``), so any manifest size fits. Groups are ordered by operation hash and rows by manifest
    row, so the same manifest always gives the same plan.

    :param valid: :attr:`ManifestValidation.valid` (or any table with its columns), possibly filtered;
        other columns (``attributes``, a caller's own) are carried along, after the plan's.
    """
    if urls_per_pipeline < 1:
        raise ValueError(f"urls_per_pipeline must be >= 1, got {urls_per_pipeline}")
    if max_batches < 1:
        raise ValueError(f"max_batches must be >= 1, got {max_batches}")
    n = valid.num_rows
    if n == 0:
        return Plan(PLAN_SCHEMA.empty_table(), urls_per_pipeline, 1, 0, 0, 0)
    hashes = _dictionary(valid["operation_hash"])
    # Rank operations by their hash text so group order does not depend on the manifest's row order
    # (dense ranks: equal texts, should a dictionary repeat one, form one group).
    rank_of_entry = pc.rank(hashes.dictionary, sort_keys="ascending", tiebreaker="dense").to_numpy()
    group = rank_of_entry[hashes.indices.to_numpy(zero_copy_only=False)]
    rows = valid["manifest_row"].to_numpy()
    order = np.lexsort((rows, group))
    sorted_group = group[order]
    # Position of each row inside its group, then the pipeline it falls into.
    starts = np.flatnonzero(np.r_[True, sorted_group[1:] != sorted_group[:-1]])
    sizes = np.diff(np.r_[starts, n])
    position = np.arange(n) - np.repeat(starts, sizes)
    pipelines_per_group = -(-sizes // urls_per_pipeline)
    first_pipeline_of_group = np.r_[0, np.cumsum(pipelines_per_group)[:-1]]
    pipeline_index = np.repeat(first_pipeline_of_group, sizes) + position // urls_per_pipeline
    num_pipelines = int(pipelines_per_group.sum())
    pipelines_per_batch = max(1, -(-num_pipelines // max_batches))
    batch_index = (pipeline_index // pipelines_per_batch).astype(np.int32)
    extra = [name for name in valid.column_names if name not in PLAN_SCHEMA.names]
    table = valid.select([*VALID_ROWS_SCHEMA.names, *extra]).take(pa.array(order))
    table = table.append_column("pipeline_index", pa.array(pipeline_index, pa.int64()))
    table = table.append_column("batch_index", pa.array(batch_index, pa.int32()))
    table = table.select([*PLAN_SCHEMA.names, *extra])
    return Plan(
        table=table.cast(pa.schema([*PLAN_SCHEMA, *(table.schema.field(name) for name in extra)])),
        urls_per_pipeline=urls_per_pipeline,
        pipelines_per_batch=pipelines_per_batch,
        num_pipelines=num_pipelines,
        num_batches=int(batch_index[-1]) + 1,
        num_operations=len(starts),
    )


# --------------------------------------------------------------------------------------------------
# Writing and reading tables atomically
# --------------------------------------------------------------------------------------------------


def _atomic_write(fs: AbstractFileSystem, path: str, write: Any) -> str:
    """Run ``write(handle)`` into a hidden temporary file beside ``path``, then move it into place."""
    parent, _, name = path.rpartition("/")
    temp = f"{parent}/.{name}.{uuid.uuid4().hex[:12]}.tmp"
    fs.makedirs(parent, exist_ok=True)
    try:
        with fs.open(temp, "wb") as handle:
            write(handle)
        if _is_local(fs):
            os.replace(temp, path)
        else:
            fs.mv(temp, path)
    except BaseException:
        try:
            if fs.exists(temp):
                fs.rm(temp)
        except OSError:  # cleanup is best effort; the original error is what matters
            log.warning("could not remove temporary file %s", temp)
        raise
    return _uri(fs, path)


def write_parquet_atomic(table: pa.Table, location: Location, *, compression: str = "zstd") -> str:
    """Write ``table`` to ``location`` so that no reader ever sees a partial file; return its URI.

    The file is written under a hidden name (``.`` prefix, which Parquet dataset readers skip) beside its
    destination and then moved into place: an atomic rename on a local disk, a server-side copy (published
    whole) on object stores.
    """
    fs, path = resolve_location(location)
    return _atomic_write(fs, path, lambda handle: pq.write_table(table, handle, compression=compression))


def write_json_atomic(payload: Any, location: Location) -> str:
    """As :func:`write_parquet_atomic`, for a small JSON document."""
    fs, path = resolve_location(location)
    data = json.dumps(payload, indent=2, sort_keys=True, default=str).encode()
    return _atomic_write(fs, path, lambda handle: handle.write(data))


def write_bytes_atomic(data: bytes, location: Location) -> str:
    """As :func:`write_parquet_atomic`, for bytes (a PNG, a CSV)."""
    fs, path = resolve_location(location)
    return _atomic_write(fs, path, lambda handle: handle.write(data))


def read_parquet(location: Location) -> pa.Table:
    """Read one Parquet file from any location."""
    fs, path = resolve_location(location)
    with fs.open(path, "rb") as handle:
        return pq.read_table(handle)


def read_json(location: Location) -> Any:
    fs, path = resolve_location(location)
    with fs.open(path, "rb") as handle:
        return json.loads(handle.read())


def run_key(dag_run_id: str) -> str:
    """A file-name-safe, unique form of a DAG run id (readable prefix + short hash)."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", dag_run_id).strip("_.")[:60]
    return f"{slug}-{hashlib.sha256(dag_run_id.encode()).hexdigest()[:10]}"


def empty_results() -> pa.Table:
    return RESULT_SCHEMA.empty_table()


def conform_results(table: pa.Table | Sequence[Mapping[str, Any]]) -> pa.Table:
    """A table (or rows) with the result schema: missing columns null, types cast, unknown columns dropped.

    :raises ValueError: a status outside :class:`ResultStatus`, or a row without status.
    """
    if not isinstance(table, pa.Table):
        # Keys a row lacks are null (from_pylist alone would take the columns of the first row only).
        table = pa.Table.from_pylist(list(table), schema=RESULT_SCHEMA)
    n = table.num_rows
    columns = []
    for f in RESULT_SCHEMA:
        if f.name in table.column_names:
            column = _as_plain(table[f.name])
            if (
                pa.types.is_timestamp(f.type)
                and pa.types.is_timestamp(column.type)
                and column.type.tz is None
            ):
                column = pc.assume_timezone(column, "UTC")
            columns.append(column.cast(f.type))
        else:
            columns.append(pa.nulls(n, f.type))
    result = pa.Table.from_arrays(columns, schema=RESULT_SCHEMA)
    statuses = set(pc.unique(result["status"]).to_pylist())
    unknown = statuses - {s.value for s in ResultStatus}
    if unknown:
        raise ValueError(f"result rows with unknown status {sorted(map(str, unknown))}")
    return result


@dataclass(frozen=True)
class WrittenResults:
    """What :func:`write_result_table` wrote: the part files and the commit marker."""

    files: list[str]
    commit_marker: str
    rows: int


def write_result_table(
    results: pa.Table, root: Location, *, dag_run_id: str, run_date: date | str, file_key: str | None = None
) -> WrittenResults:
    """Write one run's result rows under ``root``, partitioned ``run_date=YYYY-MM-DD/preset=NAME/``.

    Every file is written atomically (:func:`write_parquet_atomic`) under a name derived from the run id,
    so a retried write replaces the same files; pass ``file_key`` to name them after something more stable
    than the run id (a re-triggered run of the same logical date then replaces them too). Rows without a preset (rejected before one was known) go to
    ``preset=__unknown__``. The commit marker ``_commits/run_date=.../<run>.json`` lists the files and is
    written last.
    """
    results = conform_results(results)
    day = run_date.isoformat() if isinstance(run_date, date) else str(run_date)
    key = file_key or run_key(dag_run_id)
    now = pa.scalar(datetime.now(UTC), _TS)
    for name, value in (
        ("recorded_at", now),
        ("run_key", pa.scalar(key)),
        ("dag_run_id", pa.scalar(dag_run_id)),
    ):
        index = RESULT_SCHEMA.get_field_index(name)
        results = results.set_column(index, name, pc.fill_null(results[name], value))
    known = pc.fill_null(pc.is_in(results["preset"], pa.array(sorted(PRESETS))), False)
    presets = pc.if_else(known, results["preset"], pa.scalar(UNKNOWN_PRESET_PARTITION))
    fs, base = resolve_location(root)
    base = base.rstrip("/")
    files: list[str] = []
    for preset in sorted(set(pc.unique(presets).to_pylist())):
        part = results.filter(pc.equal(presets, preset)).select(_RESULT_FILE_SCHEMA.names)
        path = f"{base}/run_date={day}/preset={preset}/part-{key}.parquet"
        files.append(
            _atomic_write(
                fs, path, lambda handle, part=part: pq.write_table(part, handle, compression="zstd")
            )
        )
    counts = results.group_by("status").aggregate([("status", "count")])
    payload = {
        "dag_run_id": dag_run_id,
        "run_key": key,
        "run_date": day,
        "rows": results.num_rows,
        "files": files,
        "status_counts": dict(
            zip(counts["status"].to_pylist(), counts["status_count"].to_pylist(), strict=True)
        ),
        "committed_at": datetime.now(UTC).isoformat(),
    }
    data = json.dumps(payload, indent=2, sort_keys=True).encode()
    marker = _atomic_write(
        fs, f"{base}/_commits/run_date={day}/{key}.json", lambda handle: handle.write(data)
    )
    return WrittenResults(files=files, commit_marker=marker, rows=results.num_rows)


def read_result_tables(
    root: Location, *, filter: pc.Expression | None = None, columns: Sequence[str] | None = None
) -> pa.Table:
    """Every result row written under ``root`` (all runs), with the result schema; empty if none yet.

    Hidden and ``_``-prefixed paths (temporary files, commit markers) are skipped, as every Parquet reader
    does. ``run_date`` and ``preset`` come from the partition path.

    :param filter: a pyarrow expression pushed down to the files (e.g. ``pc.field("status") == "done"``).
    """
    fs, base = resolve_location(root)
    base = base.rstrip("/")
    wanted = list(columns) if columns is not None else RESULT_SCHEMA.names
    try:
        exists = fs.isdir(base)
    except OSError:  # some stores raise instead of answering False for a missing bucket prefix
        exists = False
    if not exists:
        return RESULT_SCHEMA.empty_table().select(wanted)
    dataset = ds.dataset(
        base,
        schema=RESULT_SCHEMA,
        format="parquet",
        filesystem=_arrow_fs(fs),
        partitioning=ds.partitioning(RESULT_PARTITIONING, flavor="hive"),
    )
    table = dataset.to_table(columns=wanted, filter=filter)
    if "preset" in wanted:
        index = table.schema.get_field_index("preset")
        preset = table["preset"]
        table = table.set_column(
            index,
            "preset",
            pc.if_else(pc.equal(preset, UNKNOWN_PRESET_PARTITION), pa.scalar(None, pa.string()), preset),
        )
    return table


def latest_results(results: pa.Table, *, statuses: Iterable[ResultStatus | str] | None = None) -> pa.Table:
    """The latest row per ``image_id`` (by ``recorded_at``, then ``finished_at``), optionally of some statuses.

    Use it on :func:`read_result_tables` to find, say, the last successful enhancement of every image.
    """
    if statuses is not None:
        wanted = pa.array(sorted(ResultStatus(s).value for s in statuses))
        results = results.filter(pc.is_in(results["status"], wanted))
    results = results.filter(pc.is_valid(results["image_id"]))
    if results.num_rows == 0:
        return results

    def newest_first(name: str) -> np.ndarray:
        values = results[name].cast(pa.int64()).fill_null(np.iinfo(np.int64).min)
        return -values.to_numpy().astype(np.float64)  # (float: negating int64 min would overflow)

    ids = pc.dictionary_encode(results["image_id"].combine_chunks())
    rank = np.argsort(np.argsort(np.array(ids.dictionary.to_pylist(), dtype=object)))
    group = rank[ids.indices.to_numpy(zero_copy_only=False)]
    order = np.lexsort((newest_first("finished_at"), newest_first("recorded_at"), group))
    first = np.r_[True, group[order][1:] != group[order][:-1]]
    return results.take(pa.array(order[first]))


def rejects_as_results(rejects: pa.Table, *, dag_run_id: str, run_date: date | str) -> pa.Table:
    """Result rows (status ``rejected_row``, error = the reason) for a rejects table."""
    n = rejects.num_rows
    preset = pc.replace_substring_regex(
        pc.utf8_lower(pc.utf8_trim_whitespace(rejects["preset"])), "^preset/", ""
    )
    preset = pc.if_else(
        pc.fill_null(pc.is_in(preset, pa.array(sorted(PRESETS))), False), preset, pa.scalar(None, pa.string())
    )
    day = run_date.isoformat() if isinstance(run_date, date) else str(run_date)
    return conform_results(
        pa.table(
            {
                "image_id": rejects["image_id"],
                "manifest_row": rejects["manifest_row"],
                "source_url": rejects["source_url"],
                "preset": preset,
                "status": pa.array([ResultStatus.REJECTED_ROW.value] * n, pa.string()),
                "error": rejects["reason"],
                "dag_run_id": pa.array([dag_run_id] * n, pa.string()),
                "run_date": pa.array([day] * n, pa.string()),
            }
        )
    )
