"""``leapi-server`` / ``python -m leapi_server``: the command line."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from leapi.constants import API_KEY_HEADER
from leapi_server import config as defaults
from leapi_server.config import ServerConfig

log = logging.getLogger("leapi_server")

_CONFIG_DEFAULTS = {f.name: f.default for f in dataclasses.fields(ServerConfig)}

API_KEYS_ENV = "LEAPI_API_KEYS"
WEBHOOK_SECRET_ENV = "LEAPI_WEBHOOK_SECRET"
#: Also read from the environment: a password in a command line is visible to every local user (ps).
DATABASE_URL_ENV = "LEAPI_DATABASE_URL"


def _seconds_list(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma separated seconds, got {text!r}") from exc
    if any(v < 0 for v in values):
        raise argparse.ArgumentTypeError("delays must not be negative")
    return values


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


def _default(field_name: str) -> object:
    """The default of a ``ServerConfig`` field: the one place each default is written."""
    return _CONFIG_DEFAULTS[field_name]


def build_parser() -> argparse.ArgumentParser:
    """Every flag, in the order ``--help`` lists them."""
    p = argparse.ArgumentParser(
        prog="leapi-server",
        description="A LEAPI-compatible image enhancement server (POST /v1/pipeline, GET /v1/pipeline/{id}, "
        "GET /v1/me/usage/).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    _add_service_flags(p)
    _add_delivery_flags(p)
    _add_network_policy_flags(p)
    _add_limit_flags(p.add_argument_group("limits"))
    _add_scale_out_flags(p.add_argument_group("replicas (docs/deploy.md)"))
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument(
        "--compat",
        default=defaults.COMPAT_DEFAULT,
        choices=defaults.COMPAT_MODES,
        help="'docs' serves only what the LEAPI docs promise: no Idempotency-Key, no Retry-After, every "
        "REJECTED as HTTP 200, no results[].error, a usage body of another shape (test a client against "
        "the documented contract alone)",
    )
    p.add_argument(
        "--test-finish-shuffle",
        type=float,
        default=_default("test_finish_shuffle_s"),
        metavar="SECONDS",
        help="testing only: delay each pipeline's processing by a random 0-SECONDS (seeded by its id), so "
        "pipelines finish out of submission order",
    )
    return p


def _add_service_flags(p: argparse.ArgumentParser) -> None:
    """Where to listen and store, who may call, how much, with how many workers."""
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=int, default=defaults.DEFAULT_PORT, help="port to listen on")
    p.add_argument(
        "--data-dir", type=Path, default=Path("./leapi-data"), help="SQLite database and temp files"
    )
    p.add_argument(
        "--api-key",
        action="append",
        default=[],
        help=f"an accepted {API_KEY_HEADER} (repeatable); also env {API_KEYS_ENV}, comma separated",
    )
    p.add_argument(
        "--public-url",
        default=None,
        help="base URL for tmp_url links and webhook payloads; unset: the address the client used",
    )
    p.add_argument(
        "--rate-limit-per-minute",
        type=_non_negative_int,
        default=defaults.DEFAULT_RATE_LIMIT_PER_MINUTE,
        help="POST /v1/pipeline per key per sliding minute (0: unlimited)",
    )
    p.add_argument(
        "--monthly-quota",
        type=_non_negative_int,
        default=defaults.DEFAULT_MONTHLY_QUOTA,
        help="credits (image URLs) per key per calendar month, UTC (0: unlimited)",
    )
    p.add_argument(
        "--workers", type=_positive_int, default=defaults.default_workers(), help="worker processes"
    )


def _add_delivery_flags(p: argparse.ArgumentParser) -> None:
    """How results reach the client: temp URLs and webhooks."""
    p.add_argument(
        "--temp-url-ttl",
        type=_positive_float,
        default=defaults.DEFAULT_TEMP_URL_TTL_S,
        help="seconds a tmp_url stays valid",
    )
    p.add_argument(
        "--webhook-retry-delays",
        type=_seconds_list,
        default=defaults.DEFAULT_WEBHOOK_RETRY_DELAYS_S,
        help="seconds before each webhook retry, comma separated",
    )
    p.add_argument(
        "--webhook-timeout",
        type=_positive_float,
        default=_default("webhook_timeout_s"),
        help="seconds per webhook attempt",
    )
    p.add_argument(
        "--webhook-secret",
        default=None,
        help=f"HMAC secret for webhook signatures (also env {WEBHOOK_SECRET_ENV}); unset: generated once and "
        "kept in DATA_DIR/webhook-secret",
    )


def _add_network_policy_flags(p: argparse.ArgumentParser) -> None:
    """Which addresses sources and webhooks may reach (SSRF policy)."""
    p.add_argument(
        "--allow-private-sources",
        action="store_true",
        help="allow source URLs and webhooks on loopback/private/link-local addresses (local use only)",
    )
    p.add_argument(
        "--allow-source-network",
        action="append",
        default=[],
        metavar="CIDR",
        help="allow this one private network (repeatable), e.g. an internal CDN",
    )


def _add_limit_flags(limits: argparse._ArgumentGroup) -> None:
    """What one request, download or image may cost the server."""
    limits.add_argument(
        "--max-urls-per-pipeline",
        type=_positive_int,
        default=defaults.DEFAULT_MAX_URLS_PER_PIPELINE,
        help="source URLs one pipeline may have",
    )
    limits.add_argument(
        "--max-request-bytes",
        type=_positive_int,
        default=defaults.DEFAULT_MAX_REQUEST_BYTES,
        help="request body",
    )
    limits.add_argument(
        "--max-download-bytes",
        type=_positive_int,
        default=defaults.DEFAULT_MAX_DOWNLOAD_BYTES,
        help="per source",
    )
    limits.add_argument(
        "--max-input-pixels",
        type=_positive_int,
        default=defaults.DEFAULT_MAX_INPUT_PIXELS,
        help="largest source image (width x height), checked from its header before decoding",
    )
    limits.add_argument(
        "--max-output-pixels",
        type=_positive_int,
        default=defaults.DEFAULT_MAX_OUTPUT_PIXELS,
        help="largest output (width x height) an operation may produce",
    )
    limits.add_argument(
        "--fetch-connect-timeout",
        type=_positive_float,
        default=_default("fetch_connect_timeout_s"),
        help="seconds",
    )
    limits.add_argument(
        "--fetch-read-timeout",
        type=_positive_float,
        default=_default("fetch_read_timeout_s"),
        help="between two reads",
    )
    limits.add_argument(
        "--fetch-deadline", type=_positive_float, default=_default("fetch_deadline_s"), help="whole download"
    )
    limits.add_argument(
        "--max-redirects",
        type=_non_negative_int,
        default=_default("max_redirects"),
        help="per source download",
    )
    limits.add_argument(
        "--max-image-seconds",
        type=_positive_float,
        default=defaults.DEFAULT_MAX_IMAGE_SECONDS,
        help="engine wall-clock limit per image (after its download): a worker still busy after this is "
        "replaced and the image fails",
    )
    limits.add_argument(
        "--max-task-attempts",
        type=_positive_int,
        default=_default("max_task_attempts"),
        help="interrupted tasks retried",
    )
    limits.add_argument(
        "--gc-interval",
        type=_positive_float,
        default=_default("gc_interval_s"),
        help="expired temp file sweep",
    )


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


def _add_scale_out_flags(group: argparse._ArgumentGroup) -> None:
    """Where the state lives, so that several replicas can share it."""
    group.add_argument(
        "--database-url",
        type=_database_url,
        default=None,
        help="sqlite:///PATH or postgresql://user[:password]@host:port/dbname (shared by replicas); "
        f"also env {DATABASE_URL_ENV}; default: SQLite in --data-dir",
    )
    group.add_argument(
        "--temp-store",
        type=_temp_store,
        default=defaults.DEFAULT_TEMP_STORE,
        help="file:// (signed URLs to this server) or s3://bucket/prefix (presigned S3 URLs; endpoint and "
        "credentials from the AWS environment)",
    )
    group.add_argument(
        "--lease-seconds",
        type=_positive_float,
        default=defaults.DEFAULT_LEASE_S,
        help="a replica that stops heartbeating loses its tasks to the others after this",
    )
    group.add_argument(
        "--db-pool-size",
        type=_positive_int,
        default=defaults.DEFAULT_DB_POOL_SIZE,
        help="PostgreSQL connections per replica",
    )


def config_from_args(args: argparse.Namespace, environ: dict[str, str] | os._Environ[str]) -> ServerConfig:
    keys = list(args.api_key)
    keys += [k.strip() for k in environ.get(API_KEYS_ENV, "").split(",") if k.strip()]
    keys = list(dict.fromkeys(keys))
    if not keys:
        raise SystemExit(f"leapi-server: no API key configured: pass --api-key or set {API_KEYS_ENV}")
    return ServerConfig(
        host=args.host,
        port=args.port,
        data_dir=args.data_dir.resolve(),
        api_keys=tuple(keys),
        public_url=args.public_url,
        rate_limit_per_minute=args.rate_limit_per_minute,
        monthly_quota=args.monthly_quota,
        workers=args.workers,
        temp_url_ttl_s=args.temp_url_ttl,
        webhook_retry_delays_s=args.webhook_retry_delays,
        webhook_timeout_s=args.webhook_timeout,
        webhook_secret=args.webhook_secret or environ.get(WEBHOOK_SECRET_ENV) or None,
        allow_private_sources=args.allow_private_sources,
        allowed_source_networks=tuple(args.allow_source_network),
        max_urls_per_pipeline=args.max_urls_per_pipeline,
        max_request_bytes=args.max_request_bytes,
        max_download_bytes=args.max_download_bytes,
        max_input_pixels=args.max_input_pixels,
        max_output_pixels=args.max_output_pixels,
        fetch_connect_timeout_s=args.fetch_connect_timeout,
        fetch_read_timeout_s=args.fetch_read_timeout,
        fetch_deadline_s=args.fetch_deadline,
        max_redirects=args.max_redirects,
        max_task_attempts=args.max_task_attempts,
        max_image_seconds=args.max_image_seconds,
        gc_interval_s=args.gc_interval,
        database_url=args.database_url or _env_database_url(environ),
        temp_store=args.temp_store,
        lease_s=args.lease_seconds,
        db_pool_size=args.db_pool_size,
        compat=args.compat,
        test_finish_shuffle_s=args.test_finish_shuffle,
    )


def _env_database_url(environ: dict[str, str] | os._Environ[str]) -> str | None:
    value = environ.get(DATABASE_URL_ENV, "").strip()
    if not value:
        return None
    try:
        return _database_url(value)
    except argparse.ArgumentTypeError as exc:
        raise SystemExit(f"leapi-server: {DATABASE_URL_ENV}: {exc}") from None


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    config = config_from_args(args, os.environ)
    # Imported late: --help and argument errors stay fast and don't need the server extra.
    from leapi_server.server import serve

    with contextlib.suppress(KeyboardInterrupt):
        serve(config, log_level=args.log_level)
    sys.exit(0)


if __name__ == "__main__":
    main()
