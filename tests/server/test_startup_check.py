"""The startup check: ``leapi-server`` refuses to start, saying why, when its engine cannot enhance images
(it must never accept and charge work it cannot do)."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from devkit import onnx_models
from devkit.server import free_port, running_server, wait_for_pipeline
from leapi_server.engine.model_spec import ExternalModelSpec
from leapi_server.engine.restoration_spec import MODEL_PATH
from leapi_server.engine_check import EngineUnavailableError, check_engine
from tests.server.engine.images import encode, scene

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


# --------------------------------------------------------------------------------------------------
# --restoration-model: a user's model is checked at start; the server refuses one it could not run
# --------------------------------------------------------------------------------------------------


def _start(
    tmp_path: Path, *flags: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "leapi_server", "--api-key", "k", "--data-dir", str(tmp_path / "data"),
               "--port", str(free_port()), *flags]  # fmt: skip
    return subprocess.run(
        command, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=90, check=False
    )


def test_a_usable_model_is_checked_and_described(tmp_path: Path) -> None:
    path = onnx_models.nearest_rgb_x4(tmp_path / "x4.onnx", size=(64, 64))
    described = check_engine(restoration_model=ExternalModelSpec(path))
    assert described == f"{path} (x4, RGB, tiles of 64x64)"


def _model_file(tmp_path: Path, kind: str) -> Path:
    if kind == "junk":
        (tmp_path / "junk.onnx").write_text("not a model")
        return tmp_path / "junk.onnx"
    if kind == "dynamic":
        return onnx_models.nearest_rgb_x4(tmp_path / "dynamic.onnx")
    if kind == "fixed":
        return onnx_models.nearest_rgb_x4(tmp_path / "fixed.onnx", size=(32, 32))
    return MODEL_PATH  # the built-in model's own file: two inputs


REFUSALS = [
    ("not a model", "junk", "flag", [], "not an ONNX model onnxruntime can load"),
    (
        "dynamic, no scale, from the environment",
        "dynamic",
        "env",
        [],
        "its scale cannot be read from its shapes",
    ),
    (
        "the channels do not fit",
        "fixed",
        "flag",
        ["--restoration-model-channels", "y"],
        "its input has 3 channel(s) but --restoration-model-channels y means 1",
    ),
    ("two inputs", "built-in", "flag", [], "it has 2 input(s) (planes, strength)"),
]


@pytest.mark.parametrize(
    ("kind", "given", "flags", "problem"), [case[1:] for case in REFUSALS], ids=[case[0] for case in REFUSALS]
)
def test_a_server_refuses_to_start_with_a_model_it_cannot_run(
    tmp_path: Path, kind: str, given: str, flags: list[str], problem: str
) -> None:
    """Exit status 3 with the model and its problem named, before anything is opened or listened on."""
    model = _model_file(tmp_path, kind)
    if given == "flag":
        result = _start(tmp_path, "--restoration-model", str(model), *flags)
    else:
        result = _start(tmp_path, *flags, env={"LEAPI_RESTORATION_MODEL": str(model)})
    assert result.returncode == 3, result.stderr
    expected = f"leapi-server cannot enhance images: --restoration-model {model}: {problem}"
    assert expected in result.stderr, result.stderr
    assert "ready on" not in result.stderr
    assert not (tmp_path / "data" / "leapi.sqlite3").exists()


def test_a_server_with_a_users_model_enhances_with_it(
    tmp_path: Path, source_dir: Path, source_server: str
) -> None:
    """The model reaches the worker processes: a x4 model that copies each pixel into its 4x4 block
    gives exactly that image through the API (light and tone off, PNG in and out)."""
    model = onnx_models.nearest_rgb_x4(tmp_path / "nearest_x4.onnx")  # dynamic: the scale is declared
    image = scene(60, 40, seed=3)
    (source_dir / "byo-model.png").write_bytes(encode(image, "PNG"))
    operation = {"op": "preset/marketplace", "width": 240, "restoration_level": 5, "lightai_intensity": 0.0,
                 "toneai_intensity": 0.0, "image_format": "PNG"}  # fmt: skip
    body = {
        "source": {"http": {"url": f"{source_server}/byo-model.png"}},
        "operations": [operation],
        "sink": {"temp_store": True},
    }
    with running_server(
        extra_args=("--workers", "1", "--restoration-model", str(model)),
        env={"LEAPI_RESTORATION_MODEL_SCALE": "4"},
    ) as server:
        with server.client() as client:
            submitted = client.post("/v1/pipeline", json=body).json()
            pipeline = wait_for_pipeline(client, submitted["pipeline"]["id"])
            assert pipeline["status"] == "DONE", pipeline
            download = httpx.get(pipeline["results"][0]["output_object"]["tmp_url"])
        assert f"restoration: {model} (x4, RGB, tiles of 192x192)" in server.logs()
    result = np.asarray(Image.open(io.BytesIO(download.content)).convert("RGB"))
    assert np.array_equal(result, np.repeat(np.repeat(image, 4, axis=0), 4, axis=1))
