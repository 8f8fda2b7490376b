"""Configuration of ``leapi-server``: every flag and limit in one frozen object.

The command line (``__main__``) builds it; the app, store, worker and webhook sender only read it.
Defaults are the documented LEAPI behaviour where the docs give one (24 h temp URLs, webhook retries
after 3, 6 and 10 minutes) and conservative limits where they are silent (see README, "Limits").
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

#: Not 8080: Airflow's api-server (and `airflow standalone`) listens there, and this server runs beside it.
DEFAULT_PORT = 8787
DEFAULT_TEMP_URL_TTL_S = 24 * 60 * 60
DEFAULT_WEBHOOK_RETRY_DELAYS_S = (180.0, 360.0, 600.0)
DEFAULT_RATE_LIMIT_PER_MINUTE = 120
DEFAULT_MONTHLY_QUOTA = 10_000
DEFAULT_MAX_URLS_PER_PIPELINE = 100
DEFAULT_MAX_REQUEST_BYTES = 1024 * 1024
DEFAULT_MAX_DOWNLOAD_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_INPUT_PIXELS = 100_000_000
DEFAULT_MAX_OUTPUT_PIXELS = 150_000_000
DEFAULT_IDEMPOTENCY_TTL_S = 24 * 60 * 60
#: Wall-clock seconds the engine may spend on one image (after its download). Generous: the largest
#: allowed output (150 MP) at restoration level 10 takes a few minutes on one core.
DEFAULT_MAX_IMAGE_SECONDS = 600.0
#: ``--temp-store`` default: output files in ``<data-dir>/tmp`` behind this server's signed URLs.
DEFAULT_TEMP_STORE = "file://"
#: Seconds a task leased by one replica stays its own without a heartbeat (the heartbeat renews it every
#: third of this): a replica that dies loses its tasks to the others within this time.
DEFAULT_LEASE_S = 30.0
#: PostgreSQL connections per replica: the API's threads (40 by default in anyio) rarely hold one at once.
DEFAULT_DB_POOL_SIZE = 10
#: ``--compat``: ``default`` serves this server's extensions; ``docs`` serves only what the LEAPI docs
#: promise (no Idempotency-Key, no Retry-After, every REJECTED as HTTP 200, no ``results[].error``, a
#: usage body the client does not know), to test a client against the documented contract alone.
COMPAT_DEFAULT = "default"
COMPAT_DOCS = "docs"
COMPAT_MODES = (COMPAT_DEFAULT, COMPAT_DOCS)


def default_workers() -> int:
    return os.cpu_count() or 1


@dataclass(frozen=True)
class ServerConfig:
    """Everything ``leapi-server`` can be told. See ``leapi-server --help`` for the flag of each field."""

    data_dir: Path
    api_keys: tuple[str, ...]
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    #: Base of the URLs this server hands out (``tmp_url``, webhook payloads). ``None``: derived from the
    #: address the client used (GET answers) or from ``host``/``port`` (webhooks).
    public_url: str | None = None
    #: POST /v1/pipeline requests per key and sliding minute; 0 disables the limit.
    rate_limit_per_minute: int = DEFAULT_RATE_LIMIT_PER_MINUTE
    #: Credits (image URLs) per key and calendar month (UTC); 0 disables the quota.
    monthly_quota: int = DEFAULT_MONTHLY_QUOTA
    workers: int = field(default_factory=default_workers)
    temp_url_ttl_s: float = DEFAULT_TEMP_URL_TTL_S
    webhook_retry_delays_s: tuple[float, ...] = DEFAULT_WEBHOOK_RETRY_DELAYS_S
    webhook_timeout_s: float = 10.0
    #: HMAC secret of webhook signatures; ``None``: generated once and kept in the data dir.
    webhook_secret: str | None = None
    allow_private_sources: bool = False
    #: Private networks allowed even without ``allow_private_sources`` (e.g. an internal CDN).
    allowed_source_networks: tuple[str, ...] = ()
    max_urls_per_pipeline: int = DEFAULT_MAX_URLS_PER_PIPELINE
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    max_download_bytes: int = DEFAULT_MAX_DOWNLOAD_BYTES
    max_input_pixels: int = DEFAULT_MAX_INPUT_PIXELS
    max_output_pixels: int = DEFAULT_MAX_OUTPUT_PIXELS
    fetch_connect_timeout_s: float = 5.0
    fetch_read_timeout_s: float = 15.0
    #: Whole-download deadline, so a source trickling bytes (slow-loris) cannot hold a worker.
    fetch_deadline_s: float = 60.0
    max_redirects: int = 5
    #: Engine wall-clock limit per image: a worker still on one image after this is killed (and replaced),
    #: and that image fails with a timeout error; no other image is charged an attempt for it.
    max_image_seconds: float = DEFAULT_MAX_IMAGE_SECONDS
    #: A task interrupted this many times (server killed, worker crashed) fails instead of looping.
    max_task_attempts: int = 3
    gc_interval_s: float = 600.0
    idempotency_ttl_s: float = DEFAULT_IDEMPOTENCY_TTL_S
    #: ``sqlite:///PATH`` or ``postgresql://user[:password]@host:port/dbname``; ``None``: SQLite in the
    #: data dir. Replicas share one PostgreSQL database.
    database_url: str | None = None
    #: ``file://`` (signed URLs to this server) or ``s3://bucket/prefix`` (presigned S3 URLs).
    temp_store: str = DEFAULT_TEMP_STORE
    lease_s: float = DEFAULT_LEASE_S
    db_pool_size: int = DEFAULT_DB_POOL_SIZE
    #: One of ``COMPAT_MODES`` (``--compat``).
    compat: str = COMPAT_DEFAULT
    #: Testing only (``--test-finish-shuffle``): each pipeline's images wait a random delay, 0 to this many
    #: seconds (seeded by the pipeline id, so a run repeats), before they are processed, so that pipelines
    #: finish out of submission order. 0 (the default): no delay.
    test_finish_shuffle_s: float = 0.0

    def __post_init__(self) -> None:
        if self.compat not in COMPAT_MODES:
            raise ValueError(f"compat must be one of {COMPAT_MODES}, got {self.compat!r}")
        if self.test_finish_shuffle_s < 0:
            raise ValueError("test_finish_shuffle_s must be 0 or more")

    @property
    def docs_only(self) -> bool:
        """Whether only what the LEAPI docs promise is served (``--compat docs``)."""
        return self.compat == COMPAT_DOCS

    @property
    def db_path(self) -> Path:
        return self.data_dir / "leapi.sqlite3"

    @property
    def store_url(self) -> str:
        """The ``--database-url`` in effect (the data dir's SQLite file when none was given)."""
        return self.database_url or f"sqlite:///{self.db_path}"

    @property
    def temp_dir(self) -> Path:
        return self.data_dir / "tmp"

    @property
    def worker_status_dir(self) -> Path:
        """Where each worker notes the image it is enhancing and since when (the engine time limit)."""
        return self.data_dir / "workers"

    @property
    def listen_url(self) -> str:
        host = self.host
        if host in ("0.0.0.0", "", "::"):
            host = "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    @property
    def base_url(self) -> str:
        """Base for URLs that are built without a request at hand (webhook payloads)."""
        return (self.public_url or self.listen_url).rstrip("/")
