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


#: The webhook receiver's connection (``leapi_provider.webhooks.hook``).
WEBHOOKS_CONN_TYPE = "leapi_webhooks"
WEBHOOKS_DEFAULT_CONN_ID = "leapi_webhooks_default"
LEAPI_WEBHOOKS_UI_FIELD_BEHAVIOUR: dict[str, Any] = {
    "hidden-fields": ["schema", "port", "login"],
    "relabeling": {"host": "Receiver base URL", "password": "Token secret"},
    "placeholders": {
        "host": "https://airflow.example.com/leapi-webhooks",
        "password": "a long random string (python -c 'import secrets; print(secrets.token_urlsafe(32))')",
        "extra": '{"redis_conn_id": "redis_default", "signing_secret": "whsec_...", "hint_ttl": 172800}',
    },
}

#: ``[leapi]`` options of the Airflow configuration.
CONFIG: dict[str, Any] = {
    "leapi": {
        "description": "Let's Enhance (LEAPI) provider.",
        "options": {
            "webhooks_conn_id": {
                "description": "The leapi_webhooks connection the api-server's webhook receiver "
                "(/leapi-webhooks) reads: the token secret, the signing secret and the Redis of the hints.",
                "version_added": "0.1.0",
                "type": "string",
                "example": "leapi_webhooks_default",
                "default": WEBHOOKS_DEFAULT_CONN_ID,
            }
        },
    }
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
        "hooks": [
            {
                "integration-name": INTEGRATION,
                "python-modules": ["leapi_provider.hooks.leapi", "leapi_provider.webhooks.hook"],
            }
        ],
        "operators": [
            {"integration-name": INTEGRATION, "python-modules": ["leapi_provider.operators.leapi"]}
        ],
        "sensors": [{"integration-name": INTEGRATION, "python-modules": ["leapi_provider.sensors.leapi"]}],
        "triggers": [
            {
                "integration-name": INTEGRATION,
                "python-modules": ["leapi_provider.triggers.leapi", "leapi_provider.events.triggers"],
            }
        ],
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
            },
            {
                "connection-type": WEBHOOKS_CONN_TYPE,
                "hook-class-name": "leapi_provider.webhooks.hook.LeapiWebhooksHook",
                "hook-name": "LEAPI webhook receiver",
                "ui-field-behaviour": LEAPI_WEBHOOKS_UI_FIELD_BEHAVIOUR,
            },
        ],
        # (The webhook receiver's plugin is registered by the ``airflow.plugins`` entry point, which Airflow
        # loads whatever [core] lazy_discover_providers says; see leapi_provider.webhooks.plugin.)
        "config": CONFIG,
        "extra-links": ["leapi_provider.operators.leapi.LeapiPipelineLink"],
    }
