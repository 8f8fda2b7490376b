"""Each distribution installs and works from its own wheel, with only what its metadata declares.

Three fresh venvs (:mod:`tests.fixtures.wheels`): the client alone, the client and the provider with the
``amazon`` extra, the client and the server. In each, every module of the distributions it holds imports
(the server's extras' modules fail only for want of their extra); in the provider's, the catalog DAG file
of docs/install.md runs ``marketplace_feed_etl`` end to end against a ``leapi-server`` running from the
server's venv and moto's S3 server (infrastructure, from the test venv).
"""

from __future__ import annotations

import json
import os
import subprocess
import zipfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from devkit.airflow_dags import leapi_connection_json
from devkit.catalog import put_manifest, sample_manifest, write_sample_images
from devkit.s3 import MotoS3Server, aws_connection_json
from devkit.server import RunningServer, running_server
from devkit.sources import serve_directory
from tests.support.docs import snippet

pytestmark = pytest.mark.slow

#: Imports every module of a package (walking it as installed) and reports what failed and why.
_IMPORT_ALL = r"""
import importlib, importlib.util, json, pkgutil, sys
top = sys.argv[1]
failures = {}
package = importlib.import_module(top)
names = [top] + [m.name for m in pkgutil.walk_packages(package.__path__, top + ".", onerror=lambda name: None)]
for name in names:
    try:
        importlib.import_module(name)
    except BaseException as exc:
        failures[name] = {"type": type(exc).__name__, "missing": getattr(exc, "name", None), "text": str(exc)}
present = {m: importlib.util.find_spec(m) is not None for m in ("airflow", "leapi_provider", "leapi_server")}
print(json.dumps({"file": package.__file__, "modules": names, "failures": failures, "present": present}))
"""

#: In the provider's venv: the docs' DAG file, ``dag.test()`` of its ``marketplace_feed_etl``, the result
#: table read back with the installed provider.
_RUN_FEED = r"""
import collections, importlib.util, json, sys
from datetime import datetime, timezone

from airflow.models.pool import Pool
from airflow.sdk import ObjectStoragePath
from airflow.utils import db

import leapi_provider
from leapi_provider.catalog import LEAPI_POOL
from leapi_provider.manifests import read_result_tables

dag_file, conf = sys.argv[1], json.loads(sys.argv[2])
db.initdb()
Pool.create_or_update_pool(LEAPI_POOL, slots=4, description="LEAPI submissions", include_deferred=False)
spec = importlib.util.spec_from_file_location("leapi_catalog", dag_file)
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
run = module.feed.test(run_conf=conf, logical_date=datetime.now(timezone.utc))
table = read_result_tables(ObjectStoragePath(conf["results"], conn_id="aws_default"))
feed = ObjectStoragePath(conf["export"] + "/latest/feed.csv", conn_id="aws_default")
print(json.dumps({
    "state": str(run.state), "provider": leapi_provider.__file__,
    "statuses": collections.Counter(table["status"].to_pylist()),
    "feed_rows": len(feed.read_text().splitlines()) - 1,
}))
"""


def _python(venv_python: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 120) -> Any:
    """Run the venv's python isolated (``-I``: no checkout folder, no ``PYTHONPATH`` on ``sys.path``) in
    its own folder; returns the JSON its last line printed."""
    done = subprocess.run(
        [str(venv_python), "-I", *args],
        cwd=venv_python.parents[1],
        env=env if env is not None else _airflow_env(venv_python.parents[1] / "airflow-home"),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, f"{args[:1]} failed:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    return json.loads(done.stdout.strip().splitlines()[-1])


def _airflow_env(home: Path, **extra: str) -> dict[str, str]:
    """A fresh Airflow home (SQLite in it); none of the test session's Airflow settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "PYTHON"))}
    return {
        **env,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
        **extra,
    }


def _bundle(name: str, folder: Path) -> dict[str, Any]:
    """A DAG bundle of ``folder`` (``dag.test()`` runs only DAGs a configured bundle holds)."""
    return {"name": name, "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle",
            "kwargs": {"path": str(folder)}}  # fmt: skip


def _import_all(venv_python: Path, package: str) -> dict[str, Any]:
    report = _python(venv_python, "-c", _IMPORT_ALL, package)
    assert Path(report["file"]).is_relative_to(venv_python.parents[1]), (
        "imported from the venv, not the checkout"
    )
    assert len(report["modules"]) > 5, report["modules"]
    return report


#: The one import package each wheel holds (next to its ``.dist-info``).
_PACKAGES = {"leapi": "leapi", "airflow-provider-leapi": "leapi_provider", "leapi-server": "leapi_server"}


def test_each_wheel_holds_its_package_alone(built_wheels: dict[str, Path]) -> None:
    """No development code ships: not ``devkit``, ``tests``, ``train``, ``scripts`` nor the DAG folders."""
    assert set(built_wheels) == set(_PACKAGES)
    for distribution, wheel in built_wheels.items():
        with zipfile.ZipFile(wheel) as archive:
            tops = {name.split("/", 1)[0] for name in archive.namelist()}
        assert {top for top in tops if not top.endswith(".dist-info")} == {_PACKAGES[distribution]}, tops


def test_the_client_imports_alone(client_venv: Path) -> None:
    report = _import_all(client_venv, "leapi")
    assert report["failures"] == {}
    assert report["present"] == {"airflow": False, "leapi_provider": False, "leapi_server": False}


def test_the_provider_imports_every_module_with_the_amazon_extra(provider_venv: Path) -> None:
    for package in ("leapi", "leapi_provider"):
        report = _import_all(provider_venv, package)
        assert report["failures"] == {}, json.dumps(report["failures"], indent=1)
    assert report["present"]["leapi_server"] is False
    info = _python(
        provider_venv,
        "-c",
        "import importlib.metadata as m, json\n"
        "(ep,) = [e for e in m.entry_points(group='apache_airflow_provider') if e.value.startswith('leapi_')]\n"
        "print(json.dumps(ep.load()()))",
    )
    assert info["package-name"] == "airflow-provider-leapi"


def test_the_server_imports_every_module_but_those_of_its_extras(server_venv: Path) -> None:
    report = _import_all(server_venv, "leapi_server")
    # Only the modules behind an extra fail, and only for want of that extra's package.
    extras = {
        "leapi_server.store.postgres": ("psycopg", "psycopg_pool"),
        "leapi_server.tempstore_s3": ("boto3",),
    }
    failed = {name: failure["missing"] for name, failure in report["failures"].items()}
    assert set(failed) <= set(extras), json.dumps(report["failures"], indent=1)
    assert all(failed[name] in extras[name] for name in failed), failed
    assert report["present"] == {"airflow": False, "leapi_provider": False, "leapi_server": True}


@pytest.fixture
def wheel_server(server_venv: Path, tmp_path: Path) -> Iterator[RunningServer]:
    """``leapi-server`` from the server's venv (the wheel's console script)."""
    with running_server(
        command=[str(server_venv.parent / "leapi-server")],
        data_dir=tmp_path / "leapi-server",
        api_keys=("wheel-key",),
        extra_args=("--workers", "1", "--rate-limit-per-minute", "0"),
    ) as server:
        yield server


def test_marketplace_feed_etl_runs_from_the_wheels(
    provider_venv: Path, wheel_server: RunningServer, moto_s3: MotoS3Server, tmp_path: Path
) -> None:
    images = write_sample_images(tmp_path / "sources", 5, long_sides=(240,), prefix="wheel")
    dags = tmp_path / "dags"
    dags.mkdir()
    dag_file = dags / "leapi_catalog.py"
    dag_file.write_text(snippet("docs/install.md", "catalog-dag-file"))  # what a user's DAG folder holds
    bucket = f"wheels-{tmp_path.name[-20:].lower().replace('_', '-')}"
    s3 = moto_s3.client()
    with serve_directory(tmp_path / "sources") as base_url:
        table = sample_manifest(images, base_url)
        rows = [*table.to_pylist(), {**table.to_pylist()[0], "image_id": "wheel-bad", "preset": "instagram"}]
        put_manifest(
            s3, pa.Table.from_pylist(rows, schema=table.schema), bucket=bucket, key="manifests/feed.parquet"
        )
        conf = {
            "manifest": f"s3://{bucket}/manifests/feed.parquet",
            "results": f"s3://{bucket}/results",
            "images": f"s3://{bucket}/cdn",
            "export": f"s3://{bucket}/export",
            "urls_per_pipeline": 2,
            "defer_after": 0,  # through the trigger
            "contact_sheet_images": 2,
        }
        env = _airflow_env(
            tmp_path / "airflow-home",
            AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST=json.dumps([_bundle("user-dags", dags)]),
            AIRFLOW_CONN_LEAPI_DEFAULT=leapi_connection_json(wheel_server.base_url, wheel_server.api_key),
            AIRFLOW_CONN_AWS_DEFAULT=aws_connection_json(moto_s3.endpoint_url),
            AWS_ACCESS_KEY_ID="testing",
            AWS_SECRET_ACCESS_KEY="testing",
            AWS_DEFAULT_REGION="us-east-1",
        )
        started = datetime.now(UTC)
        outcome = _python(
            provider_venv, "-c", _RUN_FEED, str(dag_file), json.dumps(conf), env=env, timeout=600
        )
        print(f"marketplace_feed_etl from the wheels: {(datetime.now(UTC) - started).total_seconds():.1f} s")

    assert outcome["state"] == "success"
    assert Path(outcome["provider"]).is_relative_to(provider_venv.parents[1])
    assert outcome["statuses"] == {"done": 5, "rejected_row": 1}
    assert outcome["feed_rows"] == 5
    assert wheel_server.used_credits() == 5
