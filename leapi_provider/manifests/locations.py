"""Locations (local paths, URLs, ``ObjectStoragePath``) and atomic writes on any of them.

Each file is written under a hidden temporary name (``.`` prefix: every Parquet dataset reader skips it) in
its final folder, then moved to its final name: an atomic rename on a local disk, a server-side copy (which
publishes the object whole) on object stores.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

log = logging.getLogger(__name__)


Location = Any  # str | os.PathLike | airflow.sdk.ObjectStoragePath (anything with ``.fs`` and ``.path``)

#: The buffer of a file written in pieces (:class:`AtomicUpload`), and so the part size of its multipart
#: upload on object stores (S3's least part is 5 MiB; s3fs's default, 50 MiB, times a few open files is
#: more memory than a streamed write should hold).
STREAMED_PART_BYTES = 8 * 2**20


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


def is_local_filesystem(fs: AbstractFileSystem) -> bool:
    from fsspec.implementations.local import LocalFileSystem

    return isinstance(fs, LocalFileSystem)


def arrow_filesystem(fs: AbstractFileSystem) -> Any:
    """pyarrow's native local filesystem where possible (faster), fsspec's otherwise."""
    if is_local_filesystem(fs):
        import pyarrow.fs as pafs

        return pafs.LocalFileSystem()
    return fs


def uri_on(fs: AbstractFileSystem, path: str) -> str:
    if is_local_filesystem(fs):
        return path
    return fs.unstrip_protocol(path)


class AtomicUpload:
    """A file written in pieces under a hidden temporary name beside ``path`` (:attr:`handle`), then either
    published under ``path`` whole (:meth:`publish`) or discarded (:meth:`discard`).

    For files written as they are produced (a catalog's result table, a row group at a time), so that a
    writer never holds the whole file.
    """

    def __init__(self, fs: AbstractFileSystem, path: str):
        parent, _, name = path.rpartition("/")
        self.fs, self.path = fs, path
        self._temp = f"{parent}/.{name}.{uuid.uuid4().hex[:12]}.tmp"
        fs.makedirs(parent, exist_ok=True)
        self.handle = fs.open(self._temp, "wb", block_size=STREAMED_PART_BYTES)

    def publish(self) -> str:
        """Close the file and move it into place; its URI. On failure the temporary file is removed."""
        try:
            self.handle.close()
            if is_local_filesystem(self.fs):
                os.replace(self._temp, self.path)
            else:
                self.fs.mv(self._temp, self.path)
        except BaseException:
            self.discard()
            raise
        return uri_on(self.fs, self.path)

    def discard(self) -> None:
        """Close and remove the temporary file (best effort: the error that led here is what matters)."""
        try:
            self.handle.close()
            if self.fs.exists(self._temp):
                self.fs.rm(self._temp)
        except (OSError, ValueError):
            log.warning("could not remove temporary file %s", self._temp)


def atomic_write(fs: AbstractFileSystem, path: str, write: Any) -> str:
    """Run ``write(handle)`` into a hidden temporary file beside ``path``, then move it into place."""
    upload = AtomicUpload(fs, path)
    try:
        write(upload.handle)
    except BaseException:
        upload.discard()
        raise
    return upload.publish()


def write_parquet_atomic(table: pa.Table, location: Location, *, compression: str = "zstd") -> str:
    """Write ``table`` to ``location`` so that no reader ever sees a partial file; return its URI.

    The file is written under a hidden name (``.`` prefix, which Parquet dataset readers skip) beside its
    destination and then moved into place: an atomic rename on a local disk, a server-side copy (published
    whole) on object stores.
    """
    fs, path = resolve_location(location)
    return atomic_write(fs, path, lambda handle: pq.write_table(table, handle, compression=compression))


def write_json_atomic(payload: Any, location: Location) -> str:
    """As :func:`write_parquet_atomic`, for a small JSON document."""
    fs, path = resolve_location(location)
    data = json.dumps(payload, indent=2, sort_keys=True, default=str).encode()
    return atomic_write(fs, path, lambda handle: handle.write(data))


def write_bytes_atomic(data: bytes, location: Location) -> str:
    """As :func:`write_parquet_atomic`, for bytes (a PNG, a CSV)."""
    fs, path = resolve_location(location)
    return atomic_write(fs, path, lambda handle: handle.write(data))


def read_parquet(location: Location) -> pa.Table:
    """Read one Parquet file from any location.

    The file is fetched whole, in one request (``cat_file``): Parquet is read from its footer back, which
    through a file handle on an object store costs a ``HEAD`` and several ranged ``GET`` requests, and the
    files read here (batches, records, results) are read whole anyway.
    """
    fs, path = resolve_location(location)
    return pq.read_table(pa.BufferReader(fs.cat_file(path)))


def read_parquet_parts(location: Location, *, rows: int) -> Iterator[pa.Table]:
    """One Parquet file from any location, ``rows`` rows at a time: its bytes are fetched whole (as in
    :func:`read_parquet`) but decoded a part at a time, so a large file is never held decoded."""
    fs, path = resolve_location(location)
    parquet = pq.ParquetFile(pa.BufferReader(fs.cat_file(path)))
    if parquet.metadata.num_rows == 0:
        yield parquet.schema_arrow.empty_table()
    for batch in parquet.iter_batches(batch_size=rows):
        yield pa.Table.from_batches([batch])


def read_json(location: Location) -> Any:
    fs, path = resolve_location(location)
    with fs.open(path, "rb") as handle:
        return json.loads(handle.read())
