"""Registration: Airflow finds the provider through its entry point, the ``leapi`` connection type, its form
and the extra link; ``airflow connections add --conn-type leapi`` is accepted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import import_module

import pytest

from leapi_provider.get_provider_info import get_provider_info


def test_every_registered_module_and_class_imports():
    info = get_provider_info()
    for section in ("hooks", "operators", "sensors", "triggers"):
        for entry in info[section]:
            for module in entry["python-modules"]:
                import_module(module)
    for transfer in info["transfers"]:
        import_module(transfer["python-module"])
    for path in [*info["extra-links"], *(c["hook-class-name"] for c in info["connection-types"])]:
        module, _, name = path.rpartition(".")
        assert hasattr(import_module(module), name), path


def test_providers_manager_sees_the_provider_connection_type_and_link():
    from airflow.providers_manager import ProvidersManager
    from airflow.sdk.providers_manager_runtime import ProvidersManagerTaskRuntime

    manager = ProvidersManager()
    assert "airflow-provider-leapi" in manager.providers
    hook = ProvidersManagerTaskRuntime().hooks["leapi"]
    assert hook is not None and hook.hook_class_name == "leapi_provider.hooks.leapi.LeapiHook"
    assert hook.connection_id_attribute_name == "leapi_conn_id"
    behaviour = manager.field_behaviours["leapi"]
    assert set(behaviour["hidden_fields"]) == {"schema", "port", "login"}
    assert behaviour["relabeling"]["password"] == "API key"
    assert {"extra__leapi__timeout", "extra__leapi__rate_limit_per_minute"} <= set(
        manager.connection_form_widgets
    )
    assert "leapi_provider.operators.leapi.LeapiPipelineLink" in manager.extra_links_class_names


@pytest.mark.slow
def test_cli_accepts_the_leapi_connection_type(airflow_db):
    from cryptography.fernet import Fernet

    # Both CLI processes must share a Fernet key to read back what the other encrypted.
    env = {
        **os.environ,
        "PYTHONWARNINGS": "ignore",
        "AIRFLOW__CORE__FERNET_KEY": Fernet.generate_key().decode(),
    }

    def airflow_cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "airflow", *args],
            check=False,
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )

    added = airflow_cli(
        "connections",
        "add",
        "leapi_cli",
        "--conn-type",
        "leapi",
        "--conn-host",
        "https://api.letsenhance.io",
        "--conn-password",
        "cli-secret",
        "--conn-extra",
        json.dumps({"rate_limit_per_minute": 60}),
    )
    assert added.returncode == 0, added.stderr[-2000:]
    listed = airflow_cli("connections", "list", "--output", "json")
    assert listed.returncode == 0, listed.stderr[-2000:]
    table = next(line for line in listed.stdout.splitlines() if line.startswith("[{"))
    assert {"conn_id": "leapi_cli", "conn_type": "leapi"} in json.loads(table)
