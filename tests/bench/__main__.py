"""Benchmark runner: ``make bench`` (all) or ``python -m tests.bench NAME [NAME ...]`` (some).

Each ``tests/bench/bench_<name>.py`` defines ``run() -> str`` returning a Markdown section (numbers and
ratios against a baseline measured in the same run). The section is saved as
``docs/benchmarks/<name>.md`` and every saved section is assembled into ``docs/benchmarks.md``, so one
benchmark can be re-run without losing the others' latest results.
"""

from __future__ import annotations

import importlib
import os
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SECTIONS = REPO / "docs" / "benchmarks"
REPORT = REPO / "docs" / "benchmarks.md"


def available() -> list[str]:
    return sorted(p.stem.removeprefix("bench_") for p in Path(__file__).parent.glob("bench_*.py"))


def run_one(name: str) -> None:
    module = importlib.import_module(f"tests.bench.bench_{name}")
    started = time.perf_counter()
    body = module.run().strip()
    elapsed = time.perf_counter() - started
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    header = (
        f"<!-- produced by: make bench  (or: .venv/bin/python -m tests.bench {name}) -->\n"
        f"_Measured {stamp} on {platform.machine()} with {os.cpu_count()} CPU cores, "
        f"Python {platform.python_version()}; this benchmark took {elapsed:.0f} s._\n\n"
    )
    SECTIONS.mkdir(parents=True, exist_ok=True)
    (SECTIONS / f"{name}.md").write_text(header + body + "\n")


def assemble() -> None:
    parts = [
        "# Benchmarks\n",
        "Produced by `make bench` (all) or `.venv/bin/python -m tests.bench NAME` (one of: "
        + ", ".join(f"`{n}`" for n in available())
        + "). Every figure is quoted against a baseline measured in the same run: the machines are noisy, "
        "so compare ratios, not absolute times.\n",
    ]
    for section in sorted(SECTIONS.glob("*.md")):
        parts.append(section.read_text())
    REPORT.write_text("\n".join(parts))


def main(argv: list[str]) -> int:
    names = argv or available()
    unknown = sorted(set(names) - set(available()))
    if unknown:
        print(f"unknown benchmark(s) {unknown}; available: {available()}", file=sys.stderr)
        return 2
    for name in names:
        print(f"== bench {name}", flush=True)
        run_one(name)
    assemble()
    print(f"wrote {REPORT.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
