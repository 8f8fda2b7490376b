"""Catalog manifests and result tables: the data side of the catalog DAGs (no HTTP, no Airflow at import).

A **manifest** is Parquet (one file, a folder, or a glob; local or any fsspec / ``ObjectStoragePath``
location), one row per image, with the columns of :data:`MANIFEST_SCHEMA`. :func:`validate_manifest`
splits it into valid rows (each with its effective operation and a stable hash of it) and a rejects table
with one reason per bad row; :func:`plan_batches` groups the valid rows by operation and cuts them into
pipelines and mapped batches. A **result table** (:data:`RESULT_SCHEMA`) has one row per manifest row and is
written partitioned by run date and preset with :func:`write_result_table` (or, part by part, a
:class:`ResultTableWriter`), atomically per file.

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

Modules: :mod:`~.schemas`, :mod:`~.locations` (atomic writes), :mod:`~.reading`, :mod:`~.validation`,
:mod:`~.planning`, :mod:`~.results`; the names below are the package's public API.
"""

from __future__ import annotations

from leapi_provider.manifests.locations import (
    Location,
    read_json,
    read_parquet,
    read_parquet_parts,
    resolve_location,
    write_bytes_atomic,
    write_json_atomic,
    write_parquet_atomic,
)
from leapi_provider.manifests.planning import PLAN_SCHEMA, Plan, plan_batches
from leapi_provider.manifests.reading import ManifestTable, manifest_files, read_manifest
from leapi_provider.manifests.results import (
    ResultTableWriter,
    WrittenResults,
    conform_results,
    empty_results,
    latest_results,
    read_result_tables,
    rejects_as_results,
    run_key,
    write_result_table,
)
from leapi_provider.manifests.schemas import (
    MANIFEST_SCHEMA,
    OPTION_COLUMNS,
    PRESETS,
    REJECTS_SCHEMA,
    REQUIRED_COLUMNS,
    RESULT_PARTITIONING,
    RESULT_SCHEMA,
    UNKNOWN_PRESET_PARTITION,
    VALID_ROWS_SCHEMA,
    ManifestError,
    RejectCode,
    ResultStatus,
)
from leapi_provider.manifests.validation import (
    ManifestValidation,
    build_operation,
    canonical_operation_json,
    normalize_preset_defaults,
    operation_hash,
    validate_manifest,
)

__all__ = [
    "MANIFEST_SCHEMA",
    "OPTION_COLUMNS",
    "PLAN_SCHEMA",
    "PRESETS",
    "REJECTS_SCHEMA",
    "REQUIRED_COLUMNS",
    "RESULT_PARTITIONING",
    "RESULT_SCHEMA",
    "UNKNOWN_PRESET_PARTITION",
    "VALID_ROWS_SCHEMA",
    "Location",
    "ManifestError",
    "ManifestTable",
    "ManifestValidation",
    "Plan",
    "RejectCode",
    "ResultStatus",
    "ResultTableWriter",
    "WrittenResults",
    "build_operation",
    "canonical_operation_json",
    "conform_results",
    "empty_results",
    "latest_results",
    "manifest_files",
    "normalize_preset_defaults",
    "operation_hash",
    "plan_batches",
    "read_json",
    "read_manifest",
    "read_parquet",
    "read_parquet_parts",
    "read_result_tables",
    "rejects_as_results",
    "resolve_location",
    "run_key",
    "validate_manifest",
    "write_bytes_atomic",
    "write_json_atomic",
    "write_parquet_atomic",
    "write_result_table",
]
