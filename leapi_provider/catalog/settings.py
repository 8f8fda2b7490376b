"""Catalog settings: what a catalog run reads, each setting declared once, and the DAG params made from it.

:class:`CatalogSettings` is the one source: every field carries its default, its JSON-schema bounds and
its description (:func:`setting`), and :func:`catalog_params` derives the DAG's ``params`` from them. The
connections are fields too, but never params: the DAG author fixes them (``add_catalog_tasks``), and a
run's conf cannot point a run at another account's connection.

Imported when a DAG file is parsed, so it stays cheap: nothing here imports pyarrow, numpy or an HTTP client.
"""

from __future__ import annotations

import dataclasses
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

#: The Airflow pool every batch task runs in: size it to the account's rate limit (requests per minute
#: divided by the pipelines one batch posts per minute; 4 is a safe start). It also sets how many batches
#: run at once, which the plan sizes batches by (``parallel_batches``).
LEAPI_POOL = "leapi"

#: Default cap on URLs per pipeline. The docs allow several URLs per pipeline without a stated maximum; ten
#: keeps one failed pipeline's blast radius small.
DEFAULT_URLS_PER_PIPELINE = 10
#: Batch sizing (see :mod:`leapi_provider.catalog.sizing`): batches planned per slot that runs batches.
BATCHES_PER_SLOT = 2
#: The account's rate the batches are sized by when ``api_requests_per_minute`` is not declared (the
#: LEAPI docs give no figure).
SIZING_REQUESTS_PER_MINUTE = 120

#: Fields a ``key_template`` may use (``str.format`` syntax; ``{sha256:.12}`` keeps 12 characters).
KEY_TEMPLATE_FIELDS = ("image_id", "preset", "ext", "sha256", "operation_hash", "pipeline_id", "run_date")
DEFAULT_KEY_TEMPLATE = "enhanced/{preset}/{image_id}.{ext}"
#: Feeds: the key changes with the content, so marketplaces and CDNs never serve a stale image.
FEED_KEY_TEMPLATE = "feed/{preset}/{image_id}/{sha256:.16}.{ext}"

CHANGE_DETECTION_MODES = ("headers", "content")
#: Change detection's requests at once per source host (``change_detection_per_host``). Scrapy's default
#: per domain, and close to a browser's 6: enough to read a CDN-hosted catalog at thousands of sources a
#: second on a fast link, little enough that a merchant's own image server does not mistake it for abuse.
DEFAULT_CHANGE_DETECTION_PER_HOST = 8
QUOTA_SHORTFALL_MODES = ("fail", "process_what_fits")
#: ``quota_guard``: "on" fails a plan whose usage answer has no readable credits figure; "off" (explicit
#: only) plans without reading ``/v1/me/usage/`` at all (servers whose usage body the client cannot read).
QUOTA_GUARD_MODES = ("on", "off")
#: SigV4 presigned URLs live 7 days at most.
MAX_PRESIGN_EXPIRES_IN_S = 7 * 24 * 60 * 60
#: Fields of :class:`CatalogSettings` the DAG author fixes (``add_catalog_tasks`` arguments), never a run.
CONNECTION_FIELDS = ("leapi_conn_id", "aws_conn_id")


def setting(default: Any, description: str = "", **schema: Any) -> Any:
    """A :class:`CatalogSettings` field: its default, and the JSON schema of its DAG param.

    :param schema: ``type`` and bounds (``minimum``, ``maximum``, ``enum``), as Airflow's ``Param`` takes.
    """
    metadata = {"param": {"description": description, **schema}}
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def connection(default: str | None, description: str) -> Any:
    """A connection-id field: set by the DAG author (an operator argument), never a DAG param."""
    return field(default=default, metadata={"connection": description})


# --------------------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CatalogSettings:
    """What one catalog run needs: the DAG run's params (:func:`catalog_params`) and the connections the
    DAG author gave ``add_catalog_tasks``."""

    # fmt: off
    manifest: str = setting("s3://my-catalog/manifests/latest/", "Manifest: Parquet file, folder or glob (any ObjectStoragePath URI).", type="string")
    results: str = setting("s3://my-catalog/leapi/results", "Result table root (partitioned run_date=/preset=).", type="string")
    images: str = setting("s3://my-catalog/leapi/images", "Where enhanced images are written.", type="string")
    export: str | None = setting(None, "Feed export folder (empty: no export).", type=["null", "string"])
    urls_per_pipeline: int = setting(DEFAULT_URLS_PER_PIPELINE, "Image URLs per LEAPI pipeline (one credit each).", type="integer", minimum=1, maximum=100)
    max_batches: int = setting(1024, "Mapped batches at most (also capped by [core] max_map_length).", type="integer", minimum=1)
    parallel_batches: int = setting(4, f"Batches that run at once (the {LEAPI_POOL!r} pool's slots); the plan makes {BATCHES_PER_SLOT} batches per slot at least.", type="integer", minimum=1)
    min_images_per_batch: int = setting(100, "Fewest images per batch when the manifest is big enough (a batch task has a fixed cost of seconds).", type="integer", minimum=1)
    api_requests_per_minute: int | None = setting(None, f"The LEAPI account's rate limit if you know it (requests a minute, status reads included): the batches and their waits then pace every request to a share of it, so the run stays under it even where the API refuses only some requests. Null: learn it from the API's refusals (batches are sized as if it were {SIZING_REQUESTS_PER_MINUTE}).", type=["null", "integer"], minimum=1)
    batch_api_minutes: float = setting(10.0, "API time one batch needs at most, in minutes at api_requests_per_minute: a failed batch redoes little and progress shows in the UI.", type="number", exclusiveMinimum=0)
    defer_after: float = setting(10.0, "Seconds a batch waits in its worker (for its pipelines, or for a rate-limit slot) before deferring to the triggerer (0: defer at once).", type="number", minimum=0)
    preset_defaults: dict[str, dict[str, Any]] = setting({}, 'Per preset default options, e.g. {"marketplace": {"width": 1600}}; manifest rows override them.', type="object")  # noqa: RUF009 - a field with a default_factory
    key_template: str = setting(DEFAULT_KEY_TEMPLATE, f"Object key under images; fields: {', '.join(KEY_TEMPLATE_FIELDS)}.", type="string")
    incremental: bool = setting(False, "Skip images whose source and operation did not change since their last success.", type="boolean")
    change_detection: str = setting("headers", "headers (ETag / Last-Modified, content hash fallback) or content (always hash the bytes).", type="string", enum=list(CHANGE_DETECTION_MODES))
    change_detection_per_host: int = setting(DEFAULT_CHANGE_DETECTION_PER_HOST, "Change detection's requests at once per source host.", type="integer", minimum=1, maximum=64)
    on_quota_shortfall: str = setting("fail", "Not enough credits: fail before spending any, or process what fits and mark the rest deferred_quota.", type="string", enum=list(QUOTA_SHORTFALL_MODES))
    quota_reserve: int = setting(0, "Credits to leave untouched.", type="integer", minimum=0)
    transfer_concurrency: int = setting(8, "Parallel downloads/uploads per batch task.", type="integer", minimum=1, maximum=64)
    contact_sheet_images: int = setting(6, "Images on the contact sheet (0: none).", type="integer", minimum=0, maximum=24)
    feed_url_template: str | None = setting(None, "Public URL of an image in the feed export, e.g. https://cdn.example.com/{key} (fields: key, bucket, uri). Empty: the object URI.", type=["null", "string"])
    presign_expires_in: int = setting(6 * 60 * 60, "Seconds the presigned URLs of s3:// sources stay valid (LEAPI may fetch a source hours after the submit).", type="integer", minimum=60, maximum=MAX_PRESIGN_EXPIRES_IN_S)
    max_credits: int | None = setting(None, "Credits this run may spend at most (one per image); images beyond it end deferred_cap. Null: no cap.", type=["null", "integer"], minimum=0)
    dry_run: bool = setting(False, "Validate, fingerprint, plan and estimate credits; write the plan and a preview table; submit nothing.", type="boolean")
    quota_guard: str = setting("on", "on: a usage answer without a readable credits figure fails the plan. off: plan without reading the usage (max_credits still caps).", type="string", enum=list(QUOTA_GUARD_MODES))
    leapi_conn_id: str = connection("leapi_default", "The LEAPI connection.")
    aws_conn_id: str | None = connection("aws_default", "The connection of s3:// locations (manifest, results, images, sources).")
    # fmt: on

    def __post_init__(self) -> None:
        check_key_template(self.key_template)
        if self.change_detection not in CHANGE_DETECTION_MODES:
            raise ValueError(f"change_detection must be one of {CHANGE_DETECTION_MODES}")
        if self.on_quota_shortfall not in QUOTA_SHORTFALL_MODES:
            raise ValueError(f"on_quota_shortfall must be one of {QUOTA_SHORTFALL_MODES}")
        if self.quota_guard not in QUOTA_GUARD_MODES:
            raise ValueError(f"quota_guard must be one of {QUOTA_GUARD_MODES}, got {self.quota_guard!r}")
        if not 1 <= self.presign_expires_in <= MAX_PRESIGN_EXPIRES_IN_S:
            raise ValueError(f"presign_expires_in must be 1 to {MAX_PRESIGN_EXPIRES_IN_S} seconds")
        if self.max_credits is not None and self.max_credits < 0:
            raise ValueError("max_credits must be 0 or more (null: no cap)")
        # (validates the options against the wire contract: pydantic only, no pyarrow)
        from leapi_provider.manifests import normalize_preset_defaults

        normalize_preset_defaults(self.preset_defaults)

    @classmethod
    def from_params(
        cls, params: Mapping[str, Any], *, leapi_conn_id: str, aws_conn_id: str | None
    ) -> CatalogSettings:
        """The settings of a run: its params (unknown keys ignored) and the DAG author's connections.

        :raises ValueError: the params name a connection (only the DAG author may choose one).
        """
        given = sorted(set(params) & set(CONNECTION_FIELDS))
        if given:
            raise ValueError(
                f"{', '.join(given)} cannot be set by a run's params or conf: the DAG author fixes the "
                f"connections (add_catalog_tasks({given[0]}=...)). Remove {given} from the trigger's conf."
            )
        names = set(param_fields())
        values = {k: v for k, v in dict(params).items() if k in names}
        for name in ("export", "feed_url_template"):
            if values.get(name) == "":
                values[name] = None
        return cls(**values, leapi_conn_id=leapi_conn_id, aws_conn_id=aws_conn_id or None)

    @property
    def sizing_requests_per_minute(self) -> int:
        """The account's rate the batches are sized by: the declared one, else
        :data:`SIZING_REQUESTS_PER_MINUTE`."""
        return self.api_requests_per_minute or SIZING_REQUESTS_PER_MINUTE


def param_fields() -> dict[str, dataclasses.Field[Any]]:
    """The fields of :class:`CatalogSettings` that are DAG params, by name."""
    return {f.name: f for f in dataclasses.fields(CatalogSettings) if "param" in f.metadata}


def catalog_params(**defaults: Any) -> dict[str, Any]:
    """DAG ``params`` for a catalog DAG, made from :class:`CatalogSettings` (each field's default, type,
    bounds and description), with ``defaults`` overriding the built-in defaults.

    :raises ValueError: an unknown name, or a connection id (those are ``add_catalog_tasks`` arguments).
    """
    from airflow.sdk import Param

    connections = sorted(set(defaults) & set(CONNECTION_FIELDS))
    if connections:
        raise ValueError(
            f"{', '.join(connections)} is not a param: pass it to add_catalog_tasks({connections[0]}=...), "
            "so that no run's conf can change it"
        )
    fields = param_fields()
    unknown = set(defaults) - set(fields)
    if unknown:
        raise ValueError(f"unknown catalog params {sorted(unknown)}")
    params = {}
    for name, spec in fields.items():
        default = defaults[name] if name in defaults else _default_of(spec)
        params[name] = Param(default, **spec.metadata["param"])
    return params


def _default_of(spec: dataclasses.Field[Any]) -> Any:
    if spec.default_factory is not dataclasses.MISSING:
        return spec.default_factory()
    return spec.default


def check_key_template(template: str) -> None:
    """:raises ValueError: a field outside :data:`KEY_TEMPLATE_FIELDS`, or no ``{image_id}`` (keys would clash)."""
    names = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    unknown = names - set(KEY_TEMPLATE_FIELDS)
    if unknown:
        raise ValueError(f"key_template uses unknown field(s) {sorted(unknown)}; use {KEY_TEMPLATE_FIELDS}")
    if "image_id" not in names:
        raise ValueError("key_template must contain {image_id}: every image needs its own key")


def safe_key_part(text: str) -> str:
    """``text`` usable as one object-key segment: URL-quoted, no ``/``, never ``.`` or ``..``."""
    quoted = quote(text, safe="-_.=@+")
    return quoted if quoted not in ("", ".", "..") else quoted.replace(".", "%2E") or "_"
