"""Fixtures of the server tests: the backend each test runs on (SQLite + file, PostgreSQL + S3), the shared
server on it, broken and hostile source files."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from devkit.server import SQLITE_BACKEND, RunningServer, ServerBackend, running_server, use_backend


def png_bomb(width: int, height: int) -> bytes:
    """A valid, fully-encoded greyscale PNG of ``width`` x ``height`` zeros: tiny on disk, huge decoded."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (
            struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
        )

    compressor = zlib.compressobj(9)
    row = b"\x00" * (width + 1)  # filter byte + pixels
    block = row * 500
    parts = []
    for _ in range(height // 500):
        parts.append(compressor.compress(block))
    parts.append(compressor.compress(row * (height % 500)))
    parts.append(compressor.flush())
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b"")
    )


@pytest.fixture(scope="session")
def hostile_sources(source_dir: Path, source_server: str, source_photos: dict[str, str]) -> dict[str, str]:
    """URLs of files that must fail their own image cleanly: a 20000x20000 PNG bomb, a truncated JPEG,
    bytes that are no image, an empty file, and a URL that answers 404."""
    burger = (source_dir / "burger.jpg").read_bytes()
    files = {
        "bomb.png": png_bomb(20_000, 20_000),
        "truncated.jpg": burger[: len(burger) // 2],
        "not-an-image.jpg": b"<html><body>Not an image</body></html>\n" * 4,
        "empty.jpg": b"",
    }
    for name, content in files.items():
        (source_dir / name).write_bytes(content)
    urls = {name: f"{source_server}/{name}" for name in files}
    urls["missing.jpg"] = f"{source_server}/missing.jpg"
    return urls


#: Every server test runs on each backend unless its module says ``pytestmark = SQLITE_ONLY``.
BACKENDS = ("sqlite", "postgres")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "sqlite_only(reason): runs on the SQLite + file backend only (the reason says why)"
    )
    config.addinivalue_line("markers", "postgres_only(reason): runs on the PostgreSQL + S3 backend only")
    config.addinivalue_line(
        "markers",
        "own_backends: starts no server on the run's backend (it opens the backends itself): runs once",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "server_backend" in metafunc.fixturenames:
        backends: tuple[str, ...] = BACKENDS
        if metafunc.definition.get_closest_marker("sqlite_only") or metafunc.definition.get_closest_marker(
            "own_backends"
        ):
            backends = ("sqlite",)
        elif metafunc.definition.get_closest_marker("postgres_only"):
            backends = ("postgres",)
        metafunc.parametrize("server_backend", backends, indirect=True, scope="session")


@pytest.fixture(scope="session")
def server_backend(request: pytest.FixtureRequest) -> ServerBackend:
    """The backend of this run of the test: SQLite + file, or PostgreSQL + S3 (moto)."""
    if request.param == "sqlite":
        return SQLITE_BACKEND
    return request.getfixturevalue("postgres_backend")


#: The backend objects of this session by name, filled as ``server_backend`` creates them.
_RESOLVED: dict[str, ServerBackend] = {}


@pytest.fixture(scope="session", autouse=True)
def _servers_use_backend(server_backend: ServerBackend) -> ServerBackend:
    """Every server test runs once per backend (autouse: the parametrization reaches every test), and the
    servers it starts use it (see :func:`pytest_runtest_setup`)."""
    _RESOLVED[server_backend.name] = server_backend
    return server_backend


def _item_backend(item: pytest.Item) -> ServerBackend:
    """A stand-in for the item's backend, resolved when a server starts (after ``server_backend`` was
    set up): servers started by its fixtures or its body without an explicit backend use it."""
    callspec = getattr(item, "callspec", None)
    name = callspec.params.get("server_backend", "sqlite") if callspec else "sqlite"
    return ServerBackend(name=name, setup=lambda data_dir: _RESOLVED[name].setup(data_dir))


# Per phase of each server test, not for the session: tests elsewhere (tests/leapi, tests/integration, in
# any order) keep the SQLite default.
@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    with use_backend(_item_backend(item)):
        yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    with use_backend(_item_backend(item)):
        yield


@pytest.fixture(scope="session")
def leapi_server(
    _servers_use_backend: ServerBackend, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    """The shared server of the server suite (as ``tests/fixtures/server.py``), on the run's backend."""
    with running_server(
        data_dir=tmp_path_factory.mktemp(f"leapi-server-{_servers_use_backend.name}"),
        api_keys=("test-key", "other-key"),
        extra_args=("--workers", "2", "--rate-limit-per-minute", "0", "--monthly-quota", "0"),
        backend=_servers_use_backend,
    ) as server:
        yield server
