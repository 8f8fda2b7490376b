"""Benchmark: the catalog at scale with webhooks on (issue #21 item 5), the webhook case of
:mod:`tests.bench.bench_scale` run alone, into its own section (``python -m tests.bench scale_webhooks``).

Size: ``LEAPI_BENCH_SCALE_WEBHOOK_IMAGES`` (default 100,000); ``LEAPI_BENCH_SCALE_WORKDIR`` keeps the work
folder. ``python -m tests.bench.bench_scale_webhooks --render results.json`` prints the report of a saved
run.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from tests.bench import bench_scale, webhooks_report


def run() -> str:
    kept = os.environ.get("LEAPI_BENCH_SCALE_WORKDIR")
    if kept:
        Path(kept).mkdir(parents=True, exist_ok=True)
        return webhooks_report.render(bench_scale.measure(Path(kept), cases=["webhooks"]))
    with tempfile.TemporaryDirectory(prefix="bench-scale-webhooks-") as tmp:
        return webhooks_report.render(bench_scale.measure(Path(tmp), cases=["webhooks"]))


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(
        description="The scale bench's webhook case (tests.bench scale_webhooks)."
    )
    parser.add_argument(
        "--render", type=Path, help="print the report of a saved results.json; measure nothing"
    )
    args = parser.parse_args()
    print(webhooks_report.render(json.loads(args.render.read_text())) if args.render else run())
