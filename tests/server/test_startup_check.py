"""The startup check: ``leapi-server`` refuses to start, saying why, when its engine cannot enhance images
(it must never accept and charge work it cannot do)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from leapi_server.engine.restoration_spec import MODEL_PATH
from leapi_server.engine_check import EngineUnavailableError, check_engine
from tests.support.server import free_port

pytestmark = pytest.mark.sqlite_only(
    "checks the data-dir lock and the engine check, which come before the store is opened"
)

#: Put on PYTHONPATH, this makes the named top-level modules fail to import, as if not installed.
_BLOCKING_SITECUSTOMIZE = """
import sys

BLOCKED = {blocked!r}


class _NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None


sys.meta_path.insert(0, _NotInstalled())
"""


def test_the_shipped_engine_passes() -> None:
    check_engine()


def test_a_missing_model_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "luma_x2.onnx"
    with pytest.raises(EngineUnavailableError, match=r"restoration model .*luma_x2\.onnx is missing"):
        check_engine(model_path=missing)


@pytest.mark.parametrize(
    "content", [b"", b"not an ONNX graph", MODEL_PATH.read_bytes()[:1000]], ids=["empty", "junk", "truncated"]
)
def test_a_corrupt_model_is_named(tmp_path: Path, content: bytes) -> None:
    corrupt = tmp_path / "luma_x2.onnx"
    corrupt.write_bytes(content)
    with pytest.raises(
        EngineUnavailableError, match=r"restoration model .*luma_x2\.onnx does not load or run"
    ):
        check_engine(model_path=corrupt)


@pytest.mark.parametrize("module", ["cv2", "onnxruntime"])
def test_server_without_an_engine_module_refuses_to_start(tmp_path: Path, module: str) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(_BLOCKING_SITECUSTOMIZE.format(blocked={module}))
    data_dir = tmp_path / "data"
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])),
    }
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "leapi_server",
            "--api-key",
            "k",
            "--data-dir",
            str(data_dir),
            "--port",
            str(port),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert (
        f"leapi-server cannot enhance images: No module named '{module}' "
        "(install leapi-server with its dependencies)" in result.stderr
    ), result.stderr
    assert "ready on" not in result.stderr
    # It refused before taking anything on: no database, nothing listening.
    assert not (data_dir / "leapi.sqlite3").exists()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)


def test_a_port_in_use_is_refused_before_the_server_says_it_is_ready(tmp_path: Path) -> None:
    """Another server (say ``airflow standalone`` on 8080) holds the port: exit 4, never "ready"."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "leapi_server", "--api-key", "k-12345", "--data-dir", str(tmp_path),
             "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )  # fmt: skip
    assert result.returncode == 4, result.stderr
    assert f"leapi-server cannot listen on 127.0.0.1:{port}" in result.stderr, result.stderr
    assert "ready on" not in result.stderr
