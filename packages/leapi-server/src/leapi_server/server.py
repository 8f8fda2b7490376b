"""Running ``leapi-server`` as a process: logging, the startup check, the data-dir lock and uvicorn."""

from __future__ import annotations

import logging
import logging.config
import re
import socket
import sys
from typing import Any

import uvicorn

from leapi_server.app import create_app
from leapi_server.config import ServerConfig
from leapi_server.datadir import DataDirInUseError, lock_data_dir
from leapi_server.engine_check import EngineUnavailableError, check_engine

log = logging.getLogger("leapi_server")

#: Exit statuses of a server that refused to start.
EXIT_DATA_DIR_IN_USE = 2
EXIT_ENGINE_UNAVAILABLE = 3
EXIT_PORT_IN_USE = 4
EXIT_DATABASE_UNAVAILABLE = 5
EXIT_TEMP_STORE_UNAVAILABLE = 6

_SECRET_QUERY = re.compile(r"(signature=)[^&\s\"]+", re.IGNORECASE)


class RedactSecrets(logging.Filter):
    """Access logs print request paths; a tmp_url's signature is a credential, so it is masked.
    (API keys travel in a header, which no log line prints.)"""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                _SECRET_QUERY.sub(r"\1REDACTED", a) if isinstance(a, str) else a for a in record.args
            )
        return True


def log_config(level: str) -> dict[str, Any]:
    """``logging.config`` of the server: one stderr handler with secrets redacted, for uvicorn and us."""
    fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"redact": {"()": RedactSecrets}},
        "formatters": {"plain": {"format": fmt}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "plain",
                "stream": "ext://sys.stderr",
                "filters": ["redact"],
            }
        },
        "loggers": {
            "uvicorn": {"handlers": ["stderr"], "level": level.upper(), "propagate": False},
            "uvicorn.access": {"handlers": ["stderr"], "level": level.upper(), "propagate": False},
            "leapi_server": {"handlers": ["stderr"], "level": level.upper(), "propagate": False},
        },
    }


def _listening_socket(config: ServerConfig) -> socket.socket:
    """The server's socket, bound before anything starts: uvicorn binds only after the application's
    startup, which logs "ready", so a port in use would fail after saying the server was ready."""
    family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((config.host, config.port))
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    return sock


def _checked_app(config: ServerConfig) -> Any:
    """The application, once its database and temp store answer; exits saying which one does not."""
    from leapi_server.store.database import DatabaseUnavailableError
    from leapi_server.tempstore import TempStoreUnavailableError

    try:
        app = create_app(config)
    except DatabaseUnavailableError as exc:
        log.error("leapi-server cannot start: %s", exc)
        sys.exit(EXIT_DATABASE_UNAVAILABLE)
    try:
        app.state.runtime.temp_store.check()
    except TempStoreUnavailableError as exc:
        log.error("leapi-server cannot start: %s", exc)
        app.state.runtime.store.close()
        sys.exit(EXIT_TEMP_STORE_UNAVAILABLE)
    return app


def serve(config: ServerConfig, *, log_level: str = "info") -> None:
    """Run the server until SIGINT/SIGTERM; exit non-zero, saying why, when it cannot start."""
    logging.config.dictConfig(log_config(log_level))
    try:
        # Before listening: a server that cannot enhance would accept and charge work it cannot do.
        restorer = check_engine(restoration_model=config.restoration_model_spec)
    except EngineUnavailableError as exc:
        log.error("leapi-server cannot enhance images: %s", exc)
        sys.exit(EXIT_ENGINE_UNAVAILABLE)
    log.info("restoration: %s", restorer)
    try:
        lock = lock_data_dir(config.data_dir)
    except DataDirInUseError as exc:
        log.error("%s", exc)
        sys.exit(EXIT_DATA_DIR_IN_USE)
    try:
        listening = _listening_socket(config)
    except OSError as exc:
        lock.close()
        log.error(
            "leapi-server cannot listen on %s:%d: %s (pick another --port)", config.host, config.port, exc
        )
        sys.exit(EXIT_PORT_IN_USE)
    try:
        app = _checked_app(config)
    except SystemExit:
        listening.close()
        lock.close()
        raise
    try:
        server = uvicorn.Server(
            uvicorn.Config(
                app,
                host=config.host,
                port=config.port,
                log_config=log_config(log_level),
                log_level=log_level,
                backlog=2048,
                timeout_graceful_shutdown=5,
                server_header=False,
            )
        )
        server.run(sockets=[listening])
    finally:
        listening.close()
        lock.close()
