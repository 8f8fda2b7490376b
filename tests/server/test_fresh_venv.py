"""The acceptance line of the server distribution: in a fresh venv holding only the ``leapi`` and
``leapi-server`` wheels (and their dependencies; no Airflow, no workspace), ``leapi-server`` starts and
enhances an image end to end.

The venv is the session's ``server_venv`` (:mod:`tests.fixtures.wheels`, shared with
``tests/integration/test_wheels.py``): the wheels built from this checkout, their dependencies at the
versions of ``uv.lock`` from uv's cache, so that a dependency the wheels need but do not declare cannot
hide behind the dev venv.
"""

from __future__ import annotations

import io
import subprocess
from pathlib import Path

import httpx
import pytest
from PIL import Image

from devkit.server import quick_start_body, running_server, wait_for_pipeline

pytestmark = pytest.mark.sqlite_only(
    "installs the base wheels (no postgres/s3 extras) into a fresh venv; what it checks does not depend "
    "on the store"
)


@pytest.fixture(scope="module")
def fresh_venv(server_venv: Path) -> Path:
    """The venv of :func:`tests.fixtures.wheels.server_venv`: the two wheels and their locked dependencies."""
    return server_venv.parents[1]


def _run_python(venv: Path, code: str) -> subprocess.CompletedProcess[str]:
    # From the venv's folder: python -c puts the working directory first on sys.path, and this
    # checkout's folder would lend it leapi_provider.
    return subprocess.run(
        [str(venv / "bin" / "python"), "-c", code],
        cwd=venv,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.slow
def test_fresh_venv_holds_the_server_and_no_airflow(fresh_venv: Path) -> None:
    found = _run_python(
        fresh_venv,
        "import importlib.util, leapi, leapi_server, leapi_server.engine\n"
        "print(leapi_server.__file__)\n"
        "print(*[m for m in ('airflow', 'leapi_provider') if importlib.util.find_spec(m)])\n",
    )
    assert found.returncode == 0, found.stderr
    location, present = found.stdout.splitlines()
    assert Path(location).resolve().is_relative_to(fresh_venv.resolve())  # the wheel, not this checkout
    assert present == ""
    no_airflow = _run_python(fresh_venv, "import airflow")
    assert no_airflow.returncode != 0 and "No module named 'airflow'" in no_airflow.stderr


@pytest.mark.slow
def test_fresh_venv_server_runs_the_quick_start(fresh_venv: Path, source_photos: dict[str, str]) -> None:
    with (
        running_server(
            command=[str(fresh_venv / "bin" / "leapi-server")], extra_args=("--workers", "1")
        ) as server,
        server.client() as client,
    ):
        accepted = client.post("/v1/pipeline", json=quick_start_body(source_photos["burger.jpg"]))
        assert accepted.status_code == 200 and accepted.json()["status"] == "ACCEPTED"
        pipeline = wait_for_pipeline(client, accepted.json()["pipeline"]["id"], timeout=120)
        assert pipeline["status"] == "DONE", pipeline["errors"]
        (result,) = pipeline["results"]
        assert result["input_object"]["size"] == [900, 600]
        download = httpx.get(result["output_object"]["tmp_url"], timeout=30)
        assert download.status_code == 200
        image = Image.open(io.BytesIO(download.content))
        assert (image.format, image.size) == ("JPEG", (1800, 1200))
