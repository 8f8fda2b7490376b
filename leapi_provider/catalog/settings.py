"""Catalog settings: the DAG params a catalog run reads, their defaults, and the object-key template.

Imported when a DAG file is parsed, so it stays cheap: nothing here imports pyarrow, numpy or an HTTP client.
"""

from __future__ import annotations

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
#: Batch sizing (see :func:`leapi_provider.catalog.plan.batch_count`): batches running at once (the
#: ``leapi`` pool's slots), batches planned per such slot, and the fewest images worth a batch's fixed cost.
DEFAULT_PARALLEL_BATCHES = 4
BATCHES_PER_SLOT = 2
DEFAULT_MIN_IMAGES_PER_BATCH = 100
#: A batch polls its pipelines in the worker this long before deferring to the triggerer: resuming a
#: deferred task costs a task start (seconds on a busy worker), more than waiting for a batch that is
#: about to finish.
DEFAULT_DEFER_AFTER_S = 10.0

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
#: How long a presigned ``s3://`` source URL stays valid: LEAPI fetches a source when its pipeline is
#: processed, which may be hours after the submit on a busy queue (the batch wait allows 6 h as well).
DEFAULT_PRESIGN_EXPIRES_IN_S = 6 * 60 * 60
#: SigV4 presigned URLs live 7 days at most.
MAX_PRESIGN_EXPIRES_IN_S = 7 * 24 * 60 * 60

# --------------------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CatalogSettings:
    """What one catalog run needs, read from the DAG's params (see :func:`catalog_params`)."""

    manifest: str
    results: str
    images: str
    export: str | None = None
    leapi_conn_id: str = "leapi_default"
    aws_conn_id: str | None = "aws_default"
    urls_per_pipeline: int = DEFAULT_URLS_PER_PIPELINE
    max_batches: int = 1024
    parallel_batches: int = DEFAULT_PARALLEL_BATCHES
    min_images_per_batch: int = DEFAULT_MIN_IMAGES_PER_BATCH
    defer_after: float = DEFAULT_DEFER_AFTER_S
    preset_defaults: dict[str, dict[str, Any]] = field(default_factory=dict)
    key_template: str = DEFAULT_KEY_TEMPLATE
    incremental: bool = False
    change_detection: str = "headers"
    change_detection_per_host: int = DEFAULT_CHANGE_DETECTION_PER_HOST
    on_quota_shortfall: str = "fail"
    quota_reserve: int = 0
    transfer_concurrency: int = 8
    contact_sheet_images: int = 6
    feed_url_template: str | None = None
    presign_expires_in: int = DEFAULT_PRESIGN_EXPIRES_IN_S
    max_credits: int | None = None
    dry_run: bool = False
    quota_guard: str = "on"

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
    def from_params(cls, params: Mapping[str, Any], **overrides: Any) -> CatalogSettings:
        names = set(cls.__dataclass_fields__)
        values = {k: v for k, v in dict(params).items() if k in names}
        values.update(overrides)
        for name in ("export", "feed_url_template", "aws_conn_id"):
            if values.get(name) == "":
                values[name] = None
        return cls(**values)


def catalog_params(**defaults: Any) -> dict[str, Any]:
    """DAG ``params`` for a catalog DAG, with ``defaults`` overriding the built-in ones."""
    from airflow.sdk import Param

    base: dict[str, tuple[Any, dict[str, Any]]] = {
        "manifest": ("s3://my-catalog/manifests/latest/", {"type": "string", "description": "Manifest: Parquet file, folder or glob (any ObjectStoragePath URI)."}),
        "results": ("s3://my-catalog/leapi/results", {"type": "string", "description": "Result table root (partitioned run_date=/preset=)."}),
        "images": ("s3://my-catalog/leapi/images", {"type": "string", "description": "Where enhanced images are written."}),
        "export": ("", {"type": "string", "description": "Feed export folder (empty: no export)."}),
        "leapi_conn_id": ("leapi_default", {"type": "string"}),
        "aws_conn_id": ("aws_default", {"type": "string", "description": "Connection of s3:// locations."}),
        "urls_per_pipeline": (DEFAULT_URLS_PER_PIPELINE, {"type": "integer", "minimum": 1, "maximum": 100}),
        "max_batches": (1024, {"type": "integer", "minimum": 1, "description": "Mapped batches at most (also capped by [core] max_map_length)."}),
        "parallel_batches": (DEFAULT_PARALLEL_BATCHES, {"type": "integer", "minimum": 1, "description": f"Batches that run at once (the {LEAPI_POOL!r} pool's slots); the plan makes {BATCHES_PER_SLOT} batches per slot at most."}),
        "min_images_per_batch": (DEFAULT_MIN_IMAGES_PER_BATCH, {"type": "integer", "minimum": 1, "description": "Fewest images per batch when the manifest is big enough (a batch task has a fixed cost of seconds)."}),
        "defer_after": (DEFAULT_DEFER_AFTER_S, {"type": "number", "minimum": 0, "description": "Seconds a batch polls in its worker before deferring its wait to the triggerer (0: defer at once)."}),
        "preset_defaults": ({}, {"type": "object", "description": "Per preset default options, e.g. {\"marketplace\": {\"width\": 1600}}; manifest rows override them."}),
        "key_template": (DEFAULT_KEY_TEMPLATE, {"type": "string", "description": f"Object key under images; fields: {', '.join(KEY_TEMPLATE_FIELDS)}."}),
        "incremental": (False, {"type": "boolean", "description": "Skip images whose source and operation did not change since their last success."}),
        "change_detection": ("headers", {"type": "string", "enum": list(CHANGE_DETECTION_MODES)}),
        "on_quota_shortfall": ("fail", {"type": "string", "enum": list(QUOTA_SHORTFALL_MODES), "description": "Not enough credits: fail before spending any, or process what fits and mark the rest deferred_quota."}),
        "quota_reserve": (0, {"type": "integer", "minimum": 0, "description": "Credits to leave untouched."}),
        "transfer_concurrency": (8, {"type": "integer", "minimum": 1, "maximum": 64}),
        "contact_sheet_images": (6, {"type": "integer", "minimum": 0, "maximum": 24}),
        "feed_url_template": ("", {"type": "string", "description": "Public URL of an image in the feed export, e.g. https://cdn.example.com/{key} (fields: key, bucket, uri). Empty: the object URI."}),
        "presign_expires_in": (DEFAULT_PRESIGN_EXPIRES_IN_S, {"type": "integer", "minimum": 60, "maximum": MAX_PRESIGN_EXPIRES_IN_S, "description": "Seconds the presigned URLs of s3:// sources stay valid (LEAPI may fetch a source hours after the submit)."}),
        "max_credits": (None, {"type": ["null", "integer"], "minimum": 0, "description": "Credits this run may spend at most (one per image); images beyond it end deferred_cap. Null: no cap."}),
        "dry_run": (False, {"type": "boolean", "description": "Validate, fingerprint, plan and estimate credits; write the plan and a preview table; submit nothing."}),
        "quota_guard": ("on", {"type": "string", "enum": list(QUOTA_GUARD_MODES), "description": "on: a usage answer without a readable credits figure fails the plan. off: plan without reading the usage (max_credits still caps)."}),
    }  # fmt: skip
    unknown = set(defaults) - set(base)
    if unknown:
        raise ValueError(f"unknown catalog params {sorted(unknown)}")
    return {name: Param(defaults.get(name, default), **schema) for name, (default, schema) in base.items()}


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
