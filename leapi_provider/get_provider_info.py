"""Provider metadata read by Airflow's ``ProvidersManager`` through the ``apache_airflow_provider`` entry point.

Kept free of heavy imports: Airflow reads it (and the connection form metadata in it) without importing
the hook.
"""

from __future__ import annotations

from importlib.metadata import version
from typing import Any

PACKAGE_NAME = "airflow-provider-leapi"
#: One source: the distribution's metadata (``pyproject.toml``).
PACKAGE_VERSION = version(PACKAGE_NAME)
INTEGRATION = "Let's Enhance (LEAPI)"

#: Connection form: host is the base URL, password the API key; the rest is unused.
LEAPI_UI_FIELD_BEHAVIOUR: dict[str, Any] = {
    "hidden-fields": ["schema", "port", "login"],
    "relabeling": {"host": "Base URL", "password": "API key"},
    "placeholders": {
        "host": "https://api.letsenhance.io",
        "password": "your LEAPI API key (X-API-KEY)",
        "extra": '{"timeout": 30, "rate_limit_per_minute": 60, "max_retries": 6, "idempotency": "auto"}',
    },
}

#: Optional connection extras (stored in ``Connection.extra``), shown as form fields.
LEAPI_CONN_FIELDS: dict[str, Any] = {
    "timeout": {
        "label": "Request timeout (s)",
        "description": "Timeout of each HTTP request to the API.",
        "schema": {"type": ["number", "null"], "minimum": 1, "default": 30},
    },
    "rate_limit_per_minute": {
        "label": "Client-side rate limit (requests/minute)",
        "description": "Spread API requests so that at most this many start in any minute (per task). "
        "Empty: no client-side limit (the hook still backs off when the API says so).",
        "schema": {"type": ["integer", "null"], "minimum": 1},
    },
    "max_retries": {
        "label": "Max retries",
        "description": "Retries of one request on transient errors, with exponential backoff and jitter.",
        "schema": {"type": ["integer", "null"], "minimum": 0, "default": 6},
    },
    "rate_limit_budget": {
        "label": "Rate-limit budget (seconds)",
        "description": "How long one request keeps retrying while the API refuses it for its rate limit "
        "(a free refusal) before the task fails and may be retried. Separate from Max retries.",
        "schema": {"type": ["number", "null"], "minimum": 0, "default": 600},
    },
    "idempotency": {
        "label": "Idempotent submits",
        "description": "When a submit fails after its body was sent: 'auto' retries it only if the server "
        "advertises Idempotency-Key support, 'always' retries it, 'never' does not (and sends no key).",
        "schema": {"type": ["string", "null"], "enum": ["auto", "always", "never", None], "default": "auto"},
    },
}


def get_provider_info() -> dict[str, Any]:
    return {
        "package-name": PACKAGE_NAME,
        "name": INTEGRATION,
        "description": "Run the Let's Enhance image API (LEAPI) at catalog scale from Apache Airflow.",
        "versions": [PACKAGE_VERSION],
        "integrations": [
            {
                "integration-name": INTEGRATION,
                "external-doc-url": "https://letsenhance.io/docs/",
                "how-to-guide": ["docs/provider.md"],
                "tags": ["service"],
            }
        ],
        "hooks": [{"integration-name": INTEGRATION, "python-modules": ["leapi_provider.hooks.leapi"]}],
        "operators": [
            {"integration-name": INTEGRATION, "python-modules": ["leapi_provider.operators.leapi"]}
        ],
        "sensors": [{"integration-name": INTEGRATION, "python-modules": ["leapi_provider.sensors.leapi"]}],
        "triggers": [{"integration-name": INTEGRATION, "python-modules": ["leapi_provider.triggers.leapi"]}],
        "transfers": [
            {
                "source-integration-name": INTEGRATION,
                "target-integration-name": "Amazon Simple Storage Service (S3)",
                "python-module": "leapi_provider.transfers.leapi_to_s3",
                "how-to-guide": "docs/provider.md",
            }
        ],
        "connection-types": [
            {
                "connection-type": "leapi",
                "hook-class-name": "leapi_provider.hooks.leapi.LeapiHook",
                "hook-name": INTEGRATION,
                "ui-field-behaviour": LEAPI_UI_FIELD_BEHAVIOUR,
                "conn-fields": LEAPI_CONN_FIELDS,
            }
        ],
        "extra-links": ["leapi_provider.operators.leapi.LeapiPipelineLink"],
    }
