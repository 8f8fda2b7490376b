"""Vectorised helpers over pyarrow arrays shared by validation, planning and result tables."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def as_plain(column: pa.ChunkedArray | pa.Array) -> pa.Array:
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if pa.types.is_dictionary(array.type):
        array = array.cast(array.type.value_type)
    return array


def dictionary_array(column: pa.ChunkedArray | pa.Array) -> pa.DictionaryArray:
    """A column as one dictionary array without nulls in its indices' way (encoding plain columns)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.unify_dictionaries() if pa.types.is_dictionary(column.type) else column
        column = column.combine_chunks()
    if not pa.types.is_dictionary(column.type):
        column = pc.dictionary_encode(column)
    return column


def is_stringlike(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


def dense_ids(arrays: Sequence[pa.Array]) -> np.ndarray:
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


def first_rows(ids: np.ndarray) -> np.ndarray:
    """For dense ids in order of first appearance, the first row of each id."""
    _, first = np.unique(ids, return_index=True)
    return first


def true_mask(array: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A boolean pyarrow array as numpy, null counting as false."""
    return np.asarray(pc.fill_null(array, False).to_numpy(zero_copy_only=False), dtype=bool)


def display_strings(column: pa.ChunkedArray, rows: pa.Array) -> pa.Array:
    """Some rows of a column as text for the rejects table, whatever its type (else null)."""
    array = as_plain(column.take(rows))
    try:
        return pc.utf8_slice_codeunits(array.cast(pa.string()), 0, 2000)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return pa.nulls(len(array), pa.string())
