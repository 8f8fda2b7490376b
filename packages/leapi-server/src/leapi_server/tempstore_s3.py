"""The S3 temp store (``--temp-store s3://bucket/prefix``): outputs in a bucket, ``tmp_url`` presigned.

Every replica uploads to the same bucket, so any replica can answer for any pipeline. The endpoint,
credentials and region come from the standard AWS environment (``AWS_ENDPOINT_URL``,
``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` or any other botocore credential source,
``AWS_DEFAULT_REGION``), so AWS S3, MinIO and moto work unchanged.

Objects are named ``{prefix}p/{pipeline_id}/{basename}_{token}.{ext}``. The token is a hash of the task
(no secret: the bucket is private and a presigned URL is the credential), the same on every replica, so
a task re-run after its replica died overwrites its own object. Expired objects are deleted by the
server's sweep (``--gc-interval``, every replica; deleting twice is harmless); a bucket lifecycle rule
on the prefix is a good second line (docs/deploy.md).
"""

from __future__ import annotations

import datetime
import mimetypes
from pathlib import Path
from typing import Any

from leapi_server.clock import SYSTEM_CLOCK, Clock
from leapi_server.tempstore import S3_SCHEME, TempStoreUnavailableError, TempUrlError, key_token

#: An object no task references is a stray only once it is this old: younger ones may belong to a task
#: another replica is finishing right now (uploaded, not yet recorded).
ORPHAN_GRACE_S = 600.0
#: SigV4 presigned URLs live at most 7 days.
MAX_PRESIGN_S = 7 * 24 * 60 * 60
#: The key of :func:`key_token` for S3 names: shared by every replica (a constant, see the module docs).
_NAME_KEY = b"leapi-server-s3-names"


def parse_s3_spec(spec: str) -> tuple[str, str]:
    """(bucket, key prefix ending in ``/`` or empty) of ``s3://bucket/prefix``."""
    bucket, _, prefix = spec[len(S3_SCHEME) :].partition("/")
    prefix = prefix.strip("/")
    return bucket, f"{prefix}/" if prefix else ""


class S3TempStore:
    """Uploads outputs to one bucket and presigns their ``tmp_url``.

    :param spec: ``s3://bucket/prefix``.
    :param scratch: local folder the workers write outputs into before the upload.
    :param client: a botocore S3 client; default one from the AWS environment.
    :param clock: the server's clock: a URL is presigned for what is left of its output's lifetime.
    """

    def __init__(self, *, spec: str, scratch: Path, client: Any = None, clock: Clock = SYSTEM_CLOCK) -> None:
        self._clock = clock
        self.bucket, self.prefix = parse_s3_spec(spec)
        self.root = Path(scratch)
        self.root.mkdir(parents=True, exist_ok=True)
        self._client = client or _client_from_environment()

    def key_stem(self, pipeline_id: int, index: int, basename: str) -> str:
        return f"p/{pipeline_id}/{basename}_{key_token(_NAME_KEY, pipeline_id, index)}"

    def check(self) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self._client.head_bucket(Bucket=self.bucket)
        except (BotoCoreError, ClientError) as exc:
            raise TempStoreUnavailableError(
                f"cannot use the temp store s3://{self.bucket}/{self.prefix}: {exc} "
                "(check the bucket, AWS_ENDPOINT_URL and the credentials)"
            ) from exc

    def publish(self, key: str) -> None:
        """Upload the worker's file, then drop the local copy. Raises
        :class:`TempStoreUnavailableError` when S3 keeps failing (botocore retries first)."""
        from botocore.exceptions import BotoCoreError, ClientError

        path = self.root / key
        try:
            with open(path, "rb") as body:
                self._client.put_object(
                    Bucket=self.bucket,
                    Key=self.prefix + key,
                    Body=body,
                    ContentType=mimetypes.guess_type(path.name)[0] or "application/octet-stream",
                )
        except (BotoCoreError, ClientError) as exc:
            raise TempStoreUnavailableError(
                f"storing the output in s3://{self.bucket} failed: {exc}"
            ) from exc
        path.unlink(missing_ok=True)

    def url(self, base_url: str, key: str, expires: int) -> str:
        lifetime = min(max(int(expires - self._clock()), 1), MAX_PRESIGN_S)
        return str(
            self._client.generate_presigned_url(
                "get_object",
                Params={
                    "Bucket": self.bucket,
                    "Key": self.prefix + key,
                    "ResponseContentType": mimetypes.guess_type(key)[0] or "application/octet-stream",
                },
                ExpiresIn=lifetime,
            )
        )

    def location(self, key: str) -> tuple[str, str, str]:
        """The object is ``s3_key_prefix + s3_key`` in ``s3_bucket`` (the docs' example: prefix "")."""
        return self.bucket, key, self.prefix

    def resolve(self, key: str, expires: str | None, signature: str | None) -> Path:
        raise TempUrlError("this server keeps its outputs in S3: use the tmp_url of the pipeline")

    def remove(self, key: str) -> None:
        self._client.delete_object(Bucket=self.bucket, Key=self.prefix + key)

    def remove_orphans(self, live_keys: set[str]) -> int:
        """At start: empty the local scratch (nothing in it is being written yet), then
        :meth:`remove_strays`."""
        for path in self.root.rglob("*"):
            if path.is_file():
                path.unlink(missing_ok=True)
        return self.remove_strays(live_keys)

    def remove_strays(self, live_keys: set[str]) -> int:
        """Delete objects under the prefix that no task references and that are older than
        :data:`ORPHAN_GRACE_S` (an image re-run after its replica died, then failed). Safe while any
        replica works: a younger object may be an upload whose task is being recorded right now."""
        cutoff = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=ORPHAN_GRACE_S)
        removed = 0
        paginator = self._client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + "p/"):
            for item in page.get("Contents", []):
                key = item["Key"][len(self.prefix) :]
                if key not in live_keys and item["LastModified"] < cutoff:
                    self._client.delete_object(Bucket=self.bucket, Key=item["Key"])
                    removed += 1
        return removed


def _client_from_environment() -> Any:
    """A thread-safe S3 client configured by the AWS environment (``AWS_ENDPOINT_URL`` included)."""
    try:
        import boto3
        from botocore.config import Config
    except ImportError as exc:  # pragma: no cover - the s3 extra ships boto3
        raise TempStoreUnavailableError("--temp-store s3:// needs boto3: install leapi-server[s3]") from exc
    return boto3.client(
        "s3",
        config=Config(
            signature_version="s3v4",
            retries={"max_attempts": 5, "mode": "standard"},
            connect_timeout=5,
            read_timeout=30,
            max_pool_connections=32,
        ),
    )
