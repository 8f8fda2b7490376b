"""Fresh venvs that hold this checkout's built wheels and nothing else than what their metadata declares.

The wheels are built from the checkout (``uv build``); each venv gets the locked versions (``uv.lock``) of
the dependencies that one set of distributions and extras declares (``uv export --no-emit-workspace``:
nothing of the workspace itself), installed from uv's cache (``--offline``: what ``make venv``
downloaded), then the wheels. A package a module imports but no metadata declares is therefore missing
there, however many other packages the dev venv lends it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
#: distribution -> its wheel's file-name prefix (``make build`` writes the same wheels to ``dist/``).
DISTRIBUTIONS = {
    "leapi": "leapi-",
    "airflow-provider-leapi": "airflow_provider_leapi-",
    "leapi-server": "leapi_server-",
}


class WheelInstallError(RuntimeError):
    """A build or install step failed; the message carries its output."""


def uv_executable() -> str | None:
    """The uv that ``make`` installs (``.work/uv``), else one on PATH, else ``None``."""
    local = REPO / ".work" / "uv" / "bin" / "uv"
    return str(local) if local.is_file() else shutil.which("uv")


@dataclass
class Timings:
    """Seconds per step, for the test's report of what the check costs."""

    steps: dict[str, float] = field(default_factory=dict)

    @property
    def total(self) -> float:
        return round(sum(self.steps.values()), 1)

    def __str__(self) -> str:
        return f"{self.total} s ({', '.join(f'{k}: {v}' for k, v in self.steps.items())})"


def run_uv(uv: str, args: Sequence[str], timings: Timings, step: str, *, timeout: float = 300) -> str:
    """``uv <args>`` outside any project venv (``UV_PYTHON_DOWNLOADS=never``); its stdout.

    :raises WheelInstallError: it failed (with its output).
    """
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "UV_PROJECT_ENVIRONMENT")}
    env["UV_PYTHON_DOWNLOADS"] = "never"
    started = time.monotonic()
    done = subprocess.run(
        [uv, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    timings.steps[step] = round(time.monotonic() - started, 2)
    if done.returncode != 0:
        raise WheelInstallError(f"{step} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done.stdout


def build_wheels(uv: str, out_dir: Path, timings: Timings) -> dict[str, Path]:
    """The three wheels, built from this checkout into ``out_dir``: distribution -> wheel."""
    run_uv(
        uv, ["build", "--all-packages", "--wheel", "--offline", "--out-dir", str(out_dir)], timings, "build"
    )
    wheels = {}
    for distribution, prefix in DISTRIBUTIONS.items():
        (wheel,) = out_dir.glob(f"{prefix}*.whl")
        wheels[distribution] = wheel
    return wheels


def fresh_venv(
    uv: str,
    venv: Path,
    *,
    distribution: str,
    wheel: Path,
    extras: Sequence[str] = (),
    workspace_wheels: Sequence[Path] = (),
    timings: Timings,
) -> Path:
    """A venv at ``venv`` holding ``wheel`` (with ``extras``), the wheels of the workspace distributions
    it depends on, and the locked versions of what they declare; nothing else. Checked with
    ``uv pip check``. Returns its python.

    :param distribution: ``wheel``'s distribution name (whose locked dependencies are installed).
    """
    lock = venv.with_name(f"pylock.{venv.name}.toml")  # (the name uv requires of a PEP 751 lock)
    tag = venv.name
    export = ["export", "--frozen", "--no-dev", "--no-emit-workspace", "--format", "pylock.toml"]
    export += ["--package", distribution, *(a for extra in extras for a in ("--extra", extra))]
    run_uv(uv, [*export, "--output-file", str(lock)], timings, f"{tag}: export")
    run_uv(uv, ["venv", "--quiet", "--python", "python3", str(venv)], timings, f"{tag}: venv")
    python = venv / "bin" / "python"
    offline = ["pip", "install", "--quiet", "--offline", "--python", str(python)]
    run_uv(uv, [*offline, "-r", str(lock)], timings, f"{tag}: dependencies")
    # --no-deps: the wheels bring nothing more; ``pip check`` then proves the lock held all they declare.
    top = f"{wheel}[{','.join(extras)}]" if extras else str(wheel)
    run_uv(uv, [*offline, "--no-deps", *map(str, workspace_wheels), top], timings, f"{tag}: wheels")
    run_uv(uv, ["pip", "check", "--python", str(python)], timings, f"{tag}: check")
    return python
