"""The temp store: output files under ``<data-dir>/tmp`` served through HMAC-signed, expiring URLs.

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
from urllib.parse import quote, urlencode

from leapi.constants import TMP_PATH_PREFIX
from leapi_server.clock import SYSTEM_CLOCK, Clock, utc_text

#: One path component of a key: no separators, no leading dot (so no ``.``/``..``/hidden files).
_COMPONENT = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,199}$")
_BASE62 = string.digits + string.ascii_letters


class TempUrlError(Exception):
    """A temp URL that must be refused (403); the message says why."""


def safe_basename(url_path: str, *, fallback: str = "image") -> str:
    """The source file name without extension, reduced to characters safe in a key (``burger`` for
    ``.../burger.jpg``)."""
    name = url_path.rsplit("/", 1)[-1]
    stem = name.rsplit(".", 1)[0] if "." in name else name
    cleaned = re.sub(r"[^A-Za-z0-9_-]+", "-", stem).strip("-")[:80]
    return cleaned or fallback


class TempStore:
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
        digest = hmac.new(self._key, f"name:{pipeline_id}:{index}".encode(), hashlib.sha256).digest()
        number = int.from_bytes(digest[:8], "big")
        token = ""
        for _ in range(6):
            number, rem = divmod(number, 62)
            token += _BASE62[rem]
        return f"p/{pipeline_id}/{basename}_{token}"

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
