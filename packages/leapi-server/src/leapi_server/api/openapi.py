"""The OpenAPI document (``/openapi.json``, ``/docs``): the wire contract of ``leapi.models`` plus what
this server enforces beyond it."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from leapi.models import PipelineRequest
from leapi_server.config import ServerConfig

#: What this server accepts as a source or webhook URL (``check_http_url``), as a JSON-schema pattern.
HTTP_URL_PATTERN = r"^[Hh][Tt][Tt][Pp][Ss]?://[A-Za-z0-9._~-]+(:[1-9][0-9]{0,3})?([/?#][\x21-\x7e]*)?$"

_DESCRIPTION = (
    "LEAPI-compatible: POST /v1/pipeline, GET /v1/pipeline/{id}, GET /v1/me/usage/. Every refusal "
    'is `{"status": "REJECTED", "reason": "..."}`. Timestamps are UTC, ISO 8601 without offset, '
    "as in the LEAPI docs."
)


def install_openapi(app: FastAPI, config: ServerConfig) -> None:
    """Serve the document built by :func:`build_openapi` (once, then cached)."""

    def openapi() -> dict[str, Any]:
        if not app.openapi_schema:
            app.openapi_schema = build_openapi(app, config)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def build_openapi(app: FastAPI, config: ServerConfig) -> dict[str, Any]:
    """The routes' document with the request model (read by hand in the submit route) added, the server's
    own limits shown and the docs' offset-less timestamps described honestly."""
    schema = get_openapi(
        title=app.title, version=app.version, summary=app.summary, description=_DESCRIPTION, routes=app.routes
    )
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    request_schema = PipelineRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    components.update(request_schema.pop("$defs", {}))
    components["PipelineRequest"] = request_schema
    _describe_server_constraints(components, config)
    _drop_datetime_format(schema)
    return schema


def _describe_server_constraints(components: dict[str, Any], config: ServerConfig) -> None:
    """The wire model documents the LEAPI contract; the schema also shows what this server enforces:
    ``url`` as a string or a list (the docs use both) of http(s) URLs, at most ``--max-urls-per-pipeline``;
    ``op`` required; ``temp_store`` true."""
    url = {"type": "string", "minLength": 1, "pattern": HTTP_URL_PATTERN}
    components["HttpSource"]["properties"]["url"] = {
        "anyOf": [
            url,
            {"type": "array", "items": url, "minItems": 1, "maxItems": config.max_urls_per_pipeline},
        ],
        "title": "Url",
        "description": "one source image URL or a list of them (one credit each)",
    }
    # ``op`` has a default in Python (``MarketplacePreset(width=...)``) but is the discriminator on the wire.
    for preset in ("MarketplacePreset", "RealEstatePreset", "PrintPreset"):
        required = components[preset].setdefault("required", [])
        if "op" not in required:
            required.insert(0, "op")
    components["Sink"]["properties"]["temp_store"] = {
        "type": "boolean",
        "const": True,
        "default": True,
        "title": "Temp Store",
        "description": "temp_store is the only sink of this server: must be true",
    }
    components["PipelineRequest"]["properties"]["notify_url"] = {
        "anyOf": [{"type": "string", "pattern": HTTP_URL_PATTERN}, {"type": "null"}],
        "default": None,
        "title": "Notify Url",
    }


def _drop_datetime_format(node: Any) -> None:
    """Timestamps are emitted as the LEAPI docs show them (no UTC offset), which is not RFC 3339
    ``date-time``; describe them honestly instead."""
    if isinstance(node, dict):
        if node.get("format") == "date-time":
            node.pop("format")
            node.setdefault("description", "ISO 8601 timestamp, UTC, without offset")
        for value in node.values():
            _drop_datetime_format(value)
    elif isinstance(node, list):
        for value in node:
            _drop_datetime_format(value)
