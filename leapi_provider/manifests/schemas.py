"""The published schemas of manifests, rejects, plans and result tables, and their status codes."""

from __future__ import annotations

import enum

import pyarrow as pa

from leapi.models import PRESET_OPS

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


STRING_OPTIONS = frozenset({"image_format"})


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


DICT_STRING = pa.dictionary(pa.int32(), pa.string())


#: Valid rows, as :func:`validate_manifest` returns them (``attributes`` is appended when the manifest has
#: it). ``preset`` is the short name; ``operation_json`` the canonical wire JSON of the effective operation.
VALID_ROWS_SCHEMA = pa.schema(
    [
        pa.field("manifest_row", pa.int64(), nullable=False),
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("source_url", pa.string(), nullable=False),
        pa.field("preset", DICT_STRING, nullable=False),
        pa.field("operation_json", DICT_STRING, nullable=False),
        pa.field("operation_hash", DICT_STRING, nullable=False),
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
    #: Not submitted: beyond the run's ``max_credits``.
    DEFERRED_CAP = "deferred_cap"
    #: Dry runs' preview table only (never in a result table): would be submitted.
    PLANNED = "planned"


TIMESTAMP_UTC = pa.timestamp("us", tz="UTC")


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
        pa.field("submitted_at", TIMESTAMP_UTC),
        pa.field("started_at", TIMESTAMP_UTC),
        pa.field("finished_at", TIMESTAMP_UTC),
        pa.field("dag_run_id", pa.string()),
        #: The file stem of the run's part files (stable across re-runs of one logical run).
        pa.field("run_key", pa.string()),
        pa.field("run_date", pa.string()),
        pa.field("recorded_at", TIMESTAMP_UTC),
    ],
    metadata={b"leapi.result.version": b"1"},
)


RESULT_FILE_SCHEMA = pa.schema([f for f in RESULT_SCHEMA if f.name not in RESULT_PARTITIONING.names])


class ManifestError(ValueError):
    """The manifest cannot be used at all: unreadable, not Parquet, missing a column, or no valid row."""
