"""The temp store: where outputs live until their ``tmp_url`` expires (``--temp-store``).

``file://`` (the default, :class:`FileTempStore`): output files under ``<data-dir>/tmp`` served by this
server through HMAC-signed, expiring URLs. ``s3://bucket/prefix`` (``leapi_server.tempstore_s3``):
outputs uploaded to S3, ``tmp_url`` a presigned GET URL; the one to use with several replicas.
Workers always write into the local scratch folder (:attr:`TempStore.root`); :meth:`TempStore.publish`
then makes the file available at its key.

File store:
A ``tmp_url`` is ``{base}/v1/tmp/{key}?expires={unix}&signature={hex}`` where ``key`` is the s3-style
``p/{pipeline_id}/{filename}`` of ``output_object.s3_key`` and the signature is HMAC-SHA256 over
``"{key}\\n{expires}"`` with a key generated once per data dir. Like the real service's presigned S3 URLs,
it needs no API key: the signature is the credential.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import re
import string
from pathlib import Path
from typing import Protocol
from urllib.parse import quote, urlencode

from leapi.constants import TMP_PATH_PREFIX
from leapi_server.clock import SYSTEM_CLOCK, Clock, utc_text

#: One path component of a key: no separators, no leading dot (so no ``.``/``..``/hidden files).
_COMPONENT = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,199}$")
_BASE62 = string.digits + string.ascii_letters


#: ``output_object.s3_bucket`` of the file store. The docs' default is ``leapi-tmp-us-east-1``; the file
#: store keeps outputs on this server's disk, and says so instead of naming a bucket that does not exist.
FILE_STORE_BUCKET = "leapi-server-tmp"
FILE_SCHEME = "file://"
S3_SCHEME = "s3://"
_BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


class TempUrlError(Exception):
    """A temp URL that must be refused (403); the message says why."""


class UnsupportedTempStoreError(ValueError):
    """A ``--temp-store`` that is neither ``file://`` nor ``s3://bucket[/prefix]``."""


class TempStoreUnavailableError(RuntimeError):
    """The temp store cannot be used (bucket missing, endpoint down, credentials refused)."""


def check_temp_store(spec: str) -> str:
    """``spec`` if this server can use it as ``--temp-store``; :class:`UnsupportedTempStoreError` if not."""
    if spec == FILE_SCHEME:
        return spec
    if spec.startswith(S3_SCHEME):
        bucket = spec[len(S3_SCHEME) :].split("/", 1)[0]
        if _BUCKET_NAME.match(bucket):
            return spec
        raise UnsupportedTempStoreError(f"--temp-store {spec!r}: {bucket!r} is not a valid S3 bucket name")
    raise UnsupportedTempStoreError(f"--temp-store {spec!r}: use file:// or s3://bucket/prefix")


def key_token(secret: bytes, pipeline_id: int, index: int) -> str:
    """Six base62 characters naming one task's output: deterministic, so a re-run (after a crash, on any
    replica sharing ``secret``) rewrites the same object instead of leaving a stray one."""
    digest = hmac.new(secret, f"name:{pipeline_id}:{index}".encode(), hashlib.sha256).digest()
    number = int.from_bytes(digest[:8], "big")
    token = ""
    for _ in range(6):
        number, rem = divmod(number, 62)
        token += _BASE62[rem]
    return token


class TempStore(Protocol):
    """What the dispatcher, the views and the garbage collector need from a temp store."""

    #: Local scratch folder the workers write outputs into (``<data-dir>/tmp``).
    root: Path

    def key_stem(self, pipeline_id: int, index: int, basename: str) -> str:
        """``p/{id}/{basename}_{token}`` (the worker adds the extension)."""
        ...

    def check(self) -> None:
        """Raise :class:`TempStoreUnavailableError` when the store cannot be used (startup check)."""
        ...

    def publish(self, key: str) -> None:
        """Make the worker's file ``root/key`` available at ``key``. Blocking."""
        ...

    def url(self, base_url: str, key: str, expires: int) -> str:
        """The ``tmp_url`` of ``key``, valid until ``expires`` (Unix seconds)."""
        ...

    def location(self, key: str) -> tuple[str, str, str]:
        """(``s3_bucket``, ``s3_key``, ``s3_key_prefix``) of ``output_object``."""
        ...

    def resolve(self, key: str, expires: str | None, signature: str | None) -> Path:
        """The local file behind a signed ``/v1/tmp`` URL, or :class:`TempUrlError`."""
        ...

    def remove(self, key: str) -> None:
        """Delete an expired output."""
        ...

    def remove_orphans(self, live_keys: set[str]) -> int:
        """At start: delete outputs no task references; returns how many."""
        ...

    def remove_strays(self, live_keys: set[str]) -> int:
        """While running (every sweep): delete old outputs no task references; returns how many."""
        ...


def safe_basename(url_path: str, *, fallback: str = "image") -> str:
    """The source file name without extension, reduced to characters safe in a key (``burger`` for
    ``.../burger.jpg``)."""
    name = url_path.rsplit("/", 1)[-1]
    stem = name.rsplit(".", 1)[0] if "." in name else name
    cleaned = re.sub(r"[^A-Za-z0-9_-]+", "-", stem).strip("-")[:80]
    return cleaned or fallback


class FileTempStore:
    """Signs, verifies and resolves temp URLs; removes expired files.

    :param root: the folder holding the files (``<data-dir>/tmp``).
    :param secret: the HMAC key of names and signatures.
    :param clock: decides whether a URL has expired.
    """

    def __init__(self, *, root: Path, secret: str, clock: Clock = SYSTEM_CLOCK) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._key = secret.encode()
        self._clock = clock

    # -- naming ---------------------------------------------------------------------------------------

    def key_stem(self, pipeline_id: int, index: int, basename: str) -> str:
        """``p/{id}/{basename}_{token}`` (extension added by the worker). Deterministic per task, so a
        re-run after a crash rewrites the same file; unguessable without the secret."""
        return f"p/{pipeline_id}/{basename}_{key_token(self._key, pipeline_id, index)}"

    def check(self) -> None:
        """Nothing to check: the folder was created with the store."""

    def publish(self, key: str) -> None:
        """Nothing to do: the worker wrote the file where it is served from."""

    def url(self, base_url: str, key: str, expires: int) -> str:
        return self.signed_url(base_url, key, expires)

    def location(self, key: str) -> tuple[str, str, str]:
        return FILE_STORE_BUCKET, key, ""

    # -- signing --------------------------------------------------------------------------------------

    def _signature(self, key: str, expires: int) -> str:
        return hmac.new(self._key, f"{key}\n{expires}".encode(), hashlib.sha256).hexdigest()

    def signed_url(self, base_url: str, key: str, expires: int) -> str:
        query = urlencode({"expires": expires, "signature": self._signature(key, expires)})
        return f"{base_url.rstrip('/')}{TMP_PATH_PREFIX}{quote(key)}?{query}"

    def resolve(self, key: str, expires: str | None, signature: str | None) -> Path:
        """The file behind a signed URL, or :class:`TempUrlError` (tampered, expired, traversal)."""
        parts = key.split("/")
        if not parts or any(not _COMPONENT.match(part) for part in parts):
            raise TempUrlError("invalid temporary URL path")
        if not expires or not signature or not expires.isdigit():
            raise TempUrlError("temporary URL is missing its expires or signature parameter")
        expected = self._signature(key, int(expires))
        if not hmac.compare_digest(expected.encode(), signature.encode()):
            raise TempUrlError("temporary URL signature does not match")
        if int(expires) < self._clock():
            raise TempUrlError(
                f"temporary URL expired at {utc_text(int(expires))}; submit the image again to get a new one"
            )
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise TempUrlError("invalid temporary URL path")
        return path

    # -- housekeeping ---------------------------------------------------------------------------------

    def remove(self, key: str) -> None:
        path = self.root / key
        path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            path.parent.rmdir()  # the pipeline's folder, once empty

    def remove_strays(self, live_keys: set[str]) -> int:
        """Nothing to do while running: one server owns the folder, and its start removed the orphans."""
        return 0

    def remove_orphans(self, live_keys: set[str]) -> int:
        """Delete files no task references (partial writes, outputs of tasks that were re-run).

        Only safe while no worker is writing, i.e. at start before the pool runs.
        """
        removed = 0
        for path in self.root.rglob("*"):
            if not path.is_file():
                continue
            key = path.relative_to(self.root).as_posix()
            if key not in live_keys:
                path.unlink(missing_ok=True)
                removed += 1
        return removed
