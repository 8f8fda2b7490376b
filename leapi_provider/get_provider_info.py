"""Provider metadata read by Airflow's ``ProvidersManager`` through the ``apache_airflow_provider`` entry point."""

from __future__ import annotations

from typing import Any


def get_provider_info() -> dict[str, Any]:
    return {
        "package-name": "airflow-provider-leapi",
        "name": "Let's Enhance (LEAPI)",
        "description": "Run the Let's Enhance image API (LEAPI) at catalog scale from Apache Airflow.",
        "versions": ["0.1.0"],
        "connection-types": [
            {"connection-type": "leapi", "hook-class-name": "leapi_provider.hooks.leapi.LeapiHook"},
        ],
    }
