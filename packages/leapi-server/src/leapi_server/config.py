"""Configuration of ``leapi-server``: every flag and limit in one frozen object, and the one place each
is declared.

Each field of :class:`ServerConfig` is one command-line flag. Its default is the field's; its help, flag
name, value parser, choices and environment variable are declared beside it with :func:`setting`, and
``leapi_server.__main__`` builds the parser from the fields alone. A field declared without
:func:`setting` still gets a flag: ``--field-name`` (a trailing ``_s``, for seconds, dropped), parsed by
its type (``bool`` is a switch, ``tuple[X, ...]`` a repeatable flag, ``X | None`` optional).

The app, store, worker and webhook sender only read the object. Defaults are the documented LEAPI
behaviour where the docs give one (24 h temp URLs, webhook retries after 3, 6 and 10 minutes) and
conservative limits where they are silent (see README, "Limits").
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field
from pathlib import Path
from typing import Any

from leapi.constants import API_KEY_HEADER
from leapi_server.engine import model_spec
from leapi_server.engine.model_spec import ExternalModelSpec

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

API_KEYS_ENV = "LEAPI_API_KEYS"
WEBHOOK_SECRET_ENV = "LEAPI_WEBHOOK_SECRET"
#: Also read from the environment: a password in a command line is visible to every local user (ps).
DATABASE_URL_ENV = "LEAPI_DATABASE_URL"
RESTORATION_MODEL_ENV = "LEAPI_RESTORATION_MODEL"
RESTORATION_MODEL_SCALE_ENV = "LEAPI_RESTORATION_MODEL_SCALE"
RESTORATION_MODEL_CHANNELS_ENV = "LEAPI_RESTORATION_MODEL_CHANNELS"
RESTORATION_MODEL_TILE_ENV = "LEAPI_RESTORATION_MODEL_TILE"

#: ``--help`` sections; fields without one are listed first, under "options".
LIMITS = "limits"
REPLICAS = "replicas (docs/deploy.md)"
ENGINE = "engine (docs/engine.md)"

#: The key of a field's :class:`Setting` in its ``dataclasses.field`` metadata.
SETTING = "leapi_setting"


def default_workers() -> int:
    return os.cpu_count() or 1


# --------------------------------------------------------------------------------------------------
# How a field is set from the command line and the environment
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    """How one :class:`ServerConfig` field is set from the command line and the environment.

    :param help: the flag's help (its default is appended by the parser).
    :param flag: the flag; default ``--`` and the field name with dashes, a trailing ``_s`` dropped.
    :param parse: one value from its text (raise ``argparse.ArgumentTypeError`` saying why it is wrong);
        default from the field's type.
    :param env: an environment variable read when the flag is not given (for a repeatable field: its
        comma-separated values are added to the flag's).
    :param group: the ``--help`` section.
    :param choices: the allowed values.
    :param metavar: the value's name in ``--help``.
    :param cli_default: the command line's default for a field that has none in the dataclass (``None``:
        the field's own).
    :param missing: for a field the command line must set: what is missing, said when it is not set.
    """

    help: str = ""
    flag: str | None = None
    parse: Callable[[str], Any] | None = None
    env: str | None = None
    group: str | None = None
    choices: tuple[Any, ...] | None = None
    metavar: str | None = None
    cli_default: Any = None
    missing: str | None = None


def setting(default: Any = MISSING, *, default_factory: Any = MISSING, **how: Any) -> Any:
    """A ``ServerConfig`` field with its :class:`Setting` (``how``: the setting's keyword arguments)."""
    metadata = {SETTING: Setting(**how)}
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata=metadata)
    if default is not MISSING:
        return field(default=default, metadata=metadata)
    return field(metadata=metadata)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _seconds_list(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma separated seconds, got {text!r}") from exc
    if any(v < 0 for v in values):
        raise argparse.ArgumentTypeError("delays must not be negative")
    return values


def _database_url(text: str) -> str:
    from leapi_server.store import UnsupportedDatabaseUrlError, check_database_url

    try:
        return check_database_url(text)
    except UnsupportedDatabaseUrlError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _temp_store(text: str) -> str:
    from leapi_server.tempstore import UnsupportedTempStoreError, check_temp_store

    try:
        return check_temp_store(text)
    except UnsupportedTempStoreError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _model_tile(text: str) -> int:
    value = int(text)
    low, high = model_spec.TILE_RANGE
    if not low <= value <= high:
        raise argparse.ArgumentTypeError(f"must be {low}-{high} pixels, got {value}")
    return value


# --------------------------------------------------------------------------------------------------
# The configuration
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerConfig:
    """Everything ``leapi-server`` can be told; each field is one flag (``leapi-server --help``)."""

    # (RUF009: setting() is dataclasses.field() with metadata; it is not a shared default.)
    data_dir: Path = setting(cli_default=Path("./leapi-data"), help="SQLite database and temp files")  # noqa: RUF009
    api_keys: tuple[str, ...] = setting(
        flag="--api-key",
        env=API_KEYS_ENV,
        metavar="API_KEY",
        missing="no API key configured",
        help=f"an accepted {API_KEY_HEADER}, each key its own account (repeatable; comma separated in the "
        "variable)",
    )
    host: str = setting("127.0.0.1", help="address to listen on")
    port: int = setting(DEFAULT_PORT, help="port to listen on")
    #: ``None``: derived from the address the client used (GET answers) or from ``host``/``port`` (webhooks).
    public_url: str | None = setting(
        None, help="base URL for tmp_url links and webhook payloads; unset: the address the client used"
    )
    rate_limit_per_minute: int = setting(
        DEFAULT_RATE_LIMIT_PER_MINUTE,
        parse=_non_negative_int,
        help="POST /v1/pipeline per key per sliding minute (0: unlimited)",
    )
    monthly_quota: int = setting(
        DEFAULT_MONTHLY_QUOTA,
        parse=_non_negative_int,
        help="credits (image URLs) per key per calendar month, UTC (0: unlimited)",
    )
    workers: int = setting(default_factory=default_workers, parse=_positive_int, help="worker processes")
    temp_url_ttl_s: float = setting(
        DEFAULT_TEMP_URL_TTL_S, parse=_positive_float, help="seconds a tmp_url stays valid"
    )
    webhook_retry_delays_s: tuple[float, ...] = setting(
        DEFAULT_WEBHOOK_RETRY_DELAYS_S,
        parse=_seconds_list,
        help="seconds before each webhook retry, comma separated",
    )
    webhook_timeout_s: float = setting(10.0, parse=_positive_float, help="seconds per webhook attempt")
    #: ``None``: generated once and kept in the data dir.
    webhook_secret: str | None = setting(
        None,
        env=WEBHOOK_SECRET_ENV,
        help="HMAC secret for webhook signatures; unset: generated once and kept in DATA_DIR/webhook-secret",
    )
    allow_private_sources: bool = setting(
        False,
        help="allow source URLs and webhooks on loopback/private/link-local addresses (local use only)",
    )
    #: Private networks allowed even without ``allow_private_sources`` (e.g. an internal CDN).
    allowed_source_networks: tuple[str, ...] = setting(
        (),
        flag="--allow-source-network",
        metavar="CIDR",
        help="allow this one private network (repeatable), e.g. an internal CDN",
    )
    max_urls_per_pipeline: int = setting(
        DEFAULT_MAX_URLS_PER_PIPELINE,
        parse=_positive_int,
        group=LIMITS,
        help="source URLs one pipeline may have",
    )
    max_request_bytes: int = setting(
        DEFAULT_MAX_REQUEST_BYTES, parse=_positive_int, group=LIMITS, help="request body"
    )
    max_download_bytes: int = setting(
        DEFAULT_MAX_DOWNLOAD_BYTES, parse=_positive_int, group=LIMITS, help="per source"
    )
    max_input_pixels: int = setting(
        DEFAULT_MAX_INPUT_PIXELS,
        parse=_positive_int,
        group=LIMITS,
        help="largest source image (width x height), checked from its header before decoding",
    )
    max_output_pixels: int = setting(
        DEFAULT_MAX_OUTPUT_PIXELS,
        parse=_positive_int,
        group=LIMITS,
        help="largest output (width x height) an operation may produce",
    )
    fetch_connect_timeout_s: float = setting(5.0, parse=_positive_float, group=LIMITS, help="seconds")
    fetch_read_timeout_s: float = setting(
        15.0, parse=_positive_float, group=LIMITS, help="seconds between two reads"
    )
    #: So a source trickling bytes (slow-loris) cannot hold a worker.
    fetch_deadline_s: float = setting(
        60.0, parse=_positive_float, group=LIMITS, help="seconds for a whole download"
    )
    max_redirects: int = setting(5, parse=_non_negative_int, group=LIMITS, help="per source download")
    #: No other image is charged an attempt for the one that ran over.
    max_image_seconds: float = setting(
        DEFAULT_MAX_IMAGE_SECONDS,
        parse=_positive_float,
        group=LIMITS,
        help="engine wall-clock limit per image (after its download): a worker still busy after this is "
        "replaced and the image fails",
    )
    #: A task interrupted this many times (server killed, worker crashed) fails instead of looping.
    max_task_attempts: int = setting(3, parse=_positive_int, group=LIMITS, help="interrupted tasks retried")
    gc_interval_s: float = setting(
        600.0, parse=_positive_float, group=LIMITS, help="seconds between expired temp file sweeps"
    )
    idempotency_ttl_s: float = setting(
        DEFAULT_IDEMPOTENCY_TTL_S,
        parse=_positive_float,
        group=LIMITS,
        help="seconds an Idempotency-Key is remembered",
    )
    #: ``None``: SQLite in the data dir.
    database_url: str | None = setting(
        None,
        parse=_database_url,
        env=DATABASE_URL_ENV,
        group=REPLICAS,
        help="sqlite:///PATH or postgresql://user[:password]@host:port/dbname (shared by replicas); unset: "
        "SQLite in --data-dir",
    )
    temp_store: str = setting(
        DEFAULT_TEMP_STORE,
        parse=_temp_store,
        group=REPLICAS,
        help="file:// (signed URLs to this server) or s3://bucket/prefix (presigned S3 URLs; endpoint and "
        "credentials from the AWS environment)",
    )
    lease_s: float = setting(
        DEFAULT_LEASE_S,
        flag="--lease-seconds",
        parse=_positive_float,
        group=REPLICAS,
        help="a replica that stops heartbeating loses its tasks to the others after this",
    )
    db_pool_size: int = setting(
        DEFAULT_DB_POOL_SIZE, parse=_positive_int, group=REPLICAS, help="PostgreSQL connections per replica"
    )
    compat: str = setting(
        COMPAT_DEFAULT,
        choices=COMPAT_MODES,
        help="'docs' serves only what the LEAPI docs promise: no Idempotency-Key, no Retry-After, every "
        "REJECTED as HTTP 200, no results[].error, a usage body of another shape (test a client against "
        "the documented contract alone)",
    )
    #: An ONNX super-resolution model run instead of the built-in luma model (``engine.external``).
    restoration_model: Path | None = setting(  # noqa: RUF009
        None,
        env=RESTORATION_MODEL_ENV,
        metavar="PATH.onnx",
        group=ENGINE,
        help="a one-input, one-output ONNX super-resolution model (x2/x3/x4, RGB or luma) to restore and "
        "upscale with, instead of the built-in model; checked at start (exit status 3 if unusable)",
    )
    restoration_model_scale: int | None = setting(
        None,
        choices=model_spec.SCALES,
        env=RESTORATION_MODEL_SCALE_ENV,
        group=ENGINE,
        help="the model's scale, when its shapes do not say (dynamic height and width)",
    )
    restoration_model_channels: str | None = setting(
        None,
        choices=tuple(model_spec.CHANNELS),
        env=RESTORATION_MODEL_CHANNELS_ENV,
        group=ENGINE,
        help="what the model's one input and output hold, when its shapes do not say: 'rgb' (3 channels) "
        "or 'y' (luma, 1 channel)",
    )
    restoration_model_tile: int = setting(
        model_spec.DEFAULT_TILE,
        parse=_model_tile,
        env=RESTORATION_MODEL_TILE_ENV,
        group=ENGINE,
        help="input pixels per side of the tiles the model runs on (bounds its working memory); a model "
        "with a fixed input size uses that size",
    )
    #: Testing only: each pipeline's images wait a random delay, 0 to this many seconds (seeded by the
    #: pipeline id, so a run repeats), before they are processed, so pipelines finish out of submission order.
    test_finish_shuffle_s: float = setting(
        0.0,
        parse=_non_negative_float,
        metavar="SECONDS",
        help="testing only: hold each pipeline back a random 0-SECONDS (seeded by its id), so pipelines "
        "finish out of submission order",
    )

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
    def restoration_model_spec(self) -> ExternalModelSpec | None:
        """The ``--restoration-model`` as the engine loads it; ``None``: the built-in model."""
        if self.restoration_model is None:
            return None
        return ExternalModelSpec(
            path=self.restoration_model,
            scale=self.restoration_model_scale,
            channels=self.restoration_model_channels,
            tile=self.restoration_model_tile,
        )

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
