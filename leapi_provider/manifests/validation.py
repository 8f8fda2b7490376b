"""Manifest validation: valid rows with their effective operation, and a rejects table with reasons."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import ValidationError

from leapi.models import PRESET_OPS, PresetOperation
from leapi_provider.manifests.arrays import (
    as_plain,
    dense_ids,
    display_strings,
    first_rows,
    is_stringlike,
    true_mask,
)
from leapi_provider.manifests.locations import Location
from leapi_provider.manifests.reading import ManifestTable
from leapi_provider.manifests.schemas import (
    DICT_STRING,
    OPTION_COLUMNS,
    PRESETS,
    REJECTS_SCHEMA,
    REQUIRED_COLUMNS,
    STRING_OPTIONS,
    VALID_ROWS_SCHEMA,
    ManifestError,
    RejectCode,
)


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


def normalize_preset_name(name: str) -> str:
    return name.strip().lower().removeprefix("preset/")


def normalize_preset_defaults(defaults: Mapping[str, Mapping[str, Any]] | None) -> dict[str, dict[str, Any]]:
    """Validate per-preset default options (as DAG params give them), keyed by short preset name.

    :raises ValueError: an unknown preset or an option its model rejects, before any row is looked at.
    """
    normalized: dict[str, dict[str, Any]] = {}
    for name, options in (defaults or {}).items():
        preset = normalize_preset_name(str(name))
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
    raw = as_plain(table[name])
    usable = (
        is_stringlike(raw.type)
        or (allow_integers and pa.types.is_integer(raw.type))
        or pa.types.is_null(raw.type)
    )
    if usable:
        values = pc.utf8_trim_whitespace(raw.cast(pa.string()))
        missing = ~true_mask(pc.greater(pc.binary_length(values), 0))
        return values, [_Check(_MISSING_CODES[name], missing, f"missing {name}")]
    expected = "a string or integer" if allow_integers else "a string"
    present = true_mask(pc.is_valid(raw))
    return pa.nulls(len(raw), pa.string()), [
        _Check(_MISSING_CODES[name], ~present, f"missing {name}"),
        _Check(RejectCode.WRONG_TYPE, present, f"{name} must be {expected} (the column is {raw.type})"),
    ]


_MISSING_CODES = {
    "image_id": RejectCode.MISSING_IMAGE_ID,
    "source_url": RejectCode.MISSING_SOURCE_URL,
    "preset": RejectCode.MISSING_PRESET,
}


#: http(s) URLs, and ``s3://bucket/key`` objects (presigned for LEAPI at submit: catalog/sources.py).
_URL_PATTERN = r"^(https?://[^/\s?#]+([/?#]\S*)?|s3://[^/\s?#]+/.+)$"


_NUMERIC_OK = (pa.types.is_integer, pa.types.is_floating, pa.types.is_decimal)


def _option_column(table: pa.Table, name: str) -> tuple[pa.Array, list[_Check]]:
    """An option column's values to validate (all null when absent), and its wrong-type check."""
    n = table.num_rows
    if name not in table.column_names:
        return pa.nulls(n), []
    raw = as_plain(table[name])
    if pa.types.is_floating(raw.type):
        raw = pc.if_else(pc.is_nan(raw), pa.scalar(None, raw.type), raw)
    accepted = (
        pa.types.is_null(raw.type)
        or is_stringlike(raw.type)
        or (name not in STRING_OPTIONS and any(check(raw.type) for check in _NUMERIC_OK))
    )
    if accepted:
        return raw, []
    expected = "a string" if name in STRING_OPTIONS else "a number"
    check = _Check(
        RejectCode.WRONG_TYPE,
        true_mask(pc.is_valid(raw)),
        f"{name} must be {expected} (the column is {raw.type})",
    )
    return pa.nulls(n), [check]


def _normalized_presets(raw: pa.Array) -> pa.DictionaryArray:
    """Short preset names (null where missing or unknown), normalising each distinct spelling once."""
    encoded = pc.dictionary_encode(raw)
    names = [None if v is None else normalize_preset_name(v) for v in encoded.dictionary.to_pylist()]
    short = sorted(PRESETS)
    lookup = np.array([short.index(v) if v in PRESETS else -1 for v in names] or [-1], dtype=np.int32)
    codes = lookup[encoded.indices.fill_null(0).to_numpy(zero_copy_only=False)]
    known = (codes >= 0) & true_mask(encoded.indices.is_valid())
    return pa.DictionaryArray.from_arrays(
        pa.array(codes, pa.int32(), mask=~known), pa.array(short, pa.string())
    )


@dataclass(frozen=True)
class _RowFields:
    """The required columns as usable values, with their checks (phase 1)."""

    image_id: pa.Array
    url: pa.Array
    preset_raw: pa.Array
    preset: pa.DictionaryArray
    #: Missing or wrong-typed columns ...
    presence_checks: list[_Check]
    #: ... then bad values (not a URL, an unknown preset).
    value_checks: list[_Check]


@dataclass(frozen=True)
class _Operations:
    """Every row's effective operation, found once per distinct (preset, options) combination (phase 2).

    :param combo_ids: the combination of each row.
    :param combo_operation: per combination, its index in ``texts`` (-1: none, the row is rejected).
    :param combo_errors: per combination, the models' complaint (null when valid).
    """

    combo_ids: np.ndarray
    combo_operation: np.ndarray
    combo_errors: pa.Array
    texts: list[str]
    #: Option columns of a type no model accepts ...
    type_checks: list[_Check]
    #: ... then option values the preset's model rejects.
    invalid_check: _Check


def validate_manifest(
    manifest: ManifestTable | pa.Table,
    *,
    preset_defaults: Mapping[str, Mapping[str, Any]] | None = None,
) -> ManifestValidation:
    """Split a manifest into valid rows and rejects (with every reason of each rejected row), vectorised.

    Phases: the required columns (:func:`_row_fields`), the options (:func:`_operations`: validated by the
    preset models once per distinct combination of values, as catalogs repeat a handful of combinations,
    so a million rows cost a handful of model validations), duplicate ids among the rows that pass
    (:func:`_duplicate_check`), then the rejects (reasons worded only for the rows that fail) and the
    valid rows.

    :param manifest: from :func:`read_manifest`, or a table with the manifest columns.
    :param preset_defaults: per-preset default options (short preset name -> options), overlaid by rows.
    :raises ManifestError: a required column is missing.
    :raises ValueError: ``preset_defaults`` names an unknown preset or an invalid option.
    """
    if isinstance(manifest, pa.Table):
        manifest = ManifestTable(
            table=manifest, files=[], file_of_row=pa.nulls(manifest.num_rows, DICT_STRING)
        )
    table = manifest.table
    missing_columns = [name for name in REQUIRED_COLUMNS if name not in table.column_names]
    if missing_columns:
        raise ManifestError(f"the manifest has no column {missing_columns}; found: {table.column_names}")
    defaults = normalize_preset_defaults(preset_defaults)
    fields = _row_fields(table)
    operations = _operations(table, fields.preset, defaults)
    # In this order: a rejected row's code is its first failed check, its reason lists every failure.
    checks = [
        *fields.presence_checks,
        *operations.type_checks,
        *fields.value_checks,
        operations.invalid_check,
    ]
    fails = np.zeros(table.num_rows, dtype=bool)
    for check in checks:
        fails |= check.fails
    duplicates = _duplicate_check(fields.image_id, fails)
    checks.append(duplicates)
    fails |= duplicates.fails
    return ManifestValidation(
        valid=_valid_rows(table, fields, operations, fails),
        rejects=_rejects(manifest, checks, fails),
        total_rows=table.num_rows,
        files=list(manifest.files),
    )


def _row_fields(table: pa.Table) -> _RowFields:
    """``image_id``, ``source_url`` and ``preset``: present, of a usable type, a URL, a known preset."""
    image_id, id_checks = _string_column(table, "image_id", allow_integers=True)
    url, url_checks = _string_column(table, "source_url", allow_integers=False)
    preset_raw, preset_checks = _string_column(table, "preset", allow_integers=False)
    url_present = ~url_checks[0].fails
    url_invalid = url_present & ~true_mask(pc.match_substring_regex(url, _URL_PATTERN, ignore_case=True))
    preset = _normalized_presets(preset_raw)
    preset_unknown = ~preset_checks[0].fails & ~true_mask(preset.is_valid())
    unknown_suffix = f"' (expected one of {', '.join(sorted(PRESETS))})"
    value_checks = [
        _Check(
            RejectCode.INVALID_SOURCE_URL,
            url_invalid,
            lambda rows: pc.binary_join_element_wise(
                "source_url is not an http(s) or s3:// URL: ",
                pc.utf8_slice_codeunits(url.take(rows), 0, 200),
                "",
            ),
        ),
        _Check(
            RejectCode.UNKNOWN_PRESET,
            preset_unknown,
            lambda rows: pc.binary_join_element_wise(
                "unknown preset '", pc.utf8_slice_codeunits(preset_raw.take(rows), 0, 100), unknown_suffix, ""
            ),
        ),
    ]
    return _RowFields(
        image_id=image_id,
        url=url,
        preset_raw=preset_raw,
        preset=preset,
        presence_checks=[*id_checks, *url_checks, *preset_checks],
        value_checks=value_checks,
    )


def _operations(
    table: pa.Table, preset: pa.DictionaryArray, defaults: Mapping[str, Mapping[str, Any]]
) -> _Operations:
    """The option columns' type checks, and each distinct (preset, options) combination's operation."""
    option_values: list[pa.Array] = []
    type_checks: list[_Check] = []
    for name in OPTION_COLUMNS:
        values, column_checks = _option_column(table, name)
        option_values.append(values)
        type_checks.extend(column_checks)
    combo_ids = dense_ids([preset, *option_values])
    first = pa.array(first_rows(combo_ids))
    combo_preset = preset.take(first).to_pylist()
    combo_options = pa.Table.from_arrays([v.take(first) for v in option_values], names=list(OPTION_COLUMNS))
    # Distinct effective operations (several spellings may give the same one), and each combination's.
    texts: dict[str, int] = {}
    combo_operation: list[int] = []
    combo_error: list[str | None] = []
    for name, options in zip(combo_preset, combo_options.to_pylist(), strict=True):
        error, index = None, -1
        if name is not None:  # missing and unknown presets are reported as such
            try:
                operation = build_operation(name, options, defaults.get(name))
            except ValidationError as exc:
                error = _format_errors(exc)
            else:
                index = texts.setdefault(canonical_operation_json(operation), len(texts))
        combo_operation.append(index)
        combo_error.append(error)
    combo_errors = pa.array(combo_error, pa.string())
    invalid_check = _Check(
        RejectCode.INVALID_OPTION,
        true_mask(combo_errors.is_valid())[combo_ids],
        lambda rows: combo_errors.take(pa.array(combo_ids[rows.to_numpy()])),
    )
    return _Operations(
        combo_ids=combo_ids,
        combo_operation=np.array(combo_operation, dtype=np.int32),
        combo_errors=combo_errors,
        texts=list(texts),
        type_checks=type_checks,
        invalid_check=invalid_check,
    )


def _duplicate_check(image_id: pa.Array, fails: np.ndarray) -> _Check:
    """Duplicates among rows that pass everything else: the first keeps the id."""
    n = len(image_id)
    passing_rows = np.flatnonzero(~fails)
    duplicate_of = np.full(n, -1, dtype=np.int64)
    if len(passing_rows):
        passing_ids = pc.dictionary_encode(image_id.take(pa.array(passing_rows))).indices
        groups = passing_ids.to_numpy(zero_copy_only=False).astype(np.int64)
        kept_row = passing_rows[first_rows(groups)][groups]
        is_duplicate = kept_row != passing_rows
        duplicate_of[passing_rows[is_duplicate]] = kept_row[is_duplicate]
    return _Check(
        RejectCode.DUPLICATE_IMAGE_ID,
        duplicate_of >= 0,
        lambda rows: pc.binary_join_element_wise(
            "duplicate image_id (kept manifest row ",
            pa.array(duplicate_of[rows.to_numpy()]).cast(pa.string()),
            ")",
            "",
        ),
    )


def _rejects(manifest: ManifestTable, checks: list[_Check], fails: np.ndarray) -> pa.Table:
    """The rejects table: every failed check's reason, in order, worded for the failing rows only; the
    code is the first failed check's."""
    table = manifest.table
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
    return pa.Table.from_arrays(
        [
            rows,
            manifest.file_of_row.take(rows).cast(pa.string()),
            display_strings(table["image_id"], rows),
            display_strings(table["source_url"], rows),
            display_strings(table["preset"], rows),
            pa.array(code_names[first_code] if len(rows) else [], pa.string()),
            reasons,
        ],
        schema=REJECTS_SCHEMA,
    )


def _valid_rows(table: pa.Table, fields: _RowFields, operations: _Operations, fails: np.ndarray) -> pa.Table:
    """The rows that passed, with their operation (dictionary-encoded: catalogs repeat a few)."""
    row_operation = operations.combo_operation[operations.combo_ids]
    operation_indices = pa.array(row_operation, pa.int32(), mask=row_operation < 0)
    texts = pa.array(operations.texts, pa.string())
    hashes = pa.array([operation_hash(t) for t in operations.texts], pa.string())
    valid_columns = {
        "manifest_row": pa.array(np.arange(table.num_rows, dtype=np.int64)),
        "image_id": fields.image_id,
        "source_url": fields.url,
        "preset": fields.preset,
        "operation_json": pa.DictionaryArray.from_arrays(operation_indices, texts),
        "operation_hash": pa.DictionaryArray.from_arrays(operation_indices, hashes),
    }
    schema = VALID_ROWS_SCHEMA
    if "attributes" in table.column_names:
        valid_columns["attributes"] = as_plain(table["attributes"])
        schema = schema.append(pa.field("attributes", valid_columns["attributes"].type))
    return pa.Table.from_pydict(valid_columns).filter(pa.array(~fails)).cast(schema)
