"""``make demo`` (``scripts/demo_catalog.py``) as a user runs it, in its own folder: the private-bucket
sources end ``done`` with ``s3://`` URIs, the HTML report is written and listed, and no presigned URL
appears in anything the demo printed or logged (at INFO) nor in the tables it left in the bucket. Run
again, it skips every photograph, pays nothing and counts both runs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pyarrow.dataset as ds
import pytest

from tests.fixtures.airflow import REPO

pytestmark = pytest.mark.slow
PRESIGNED = re.compile(r"X-Amz-Signature|X-Amz-Credential|AWSAccessKeyId=|[?&]Signature=")


def test_demo_enhances_private_sources_never_shows_a_presigned_url_and_skips_on_its_rerun(
    tmp_path: Path,
) -> None:
    demo_dir = tmp_path / "demo"
    env = {**os.environ, "LEAPI_DEMO_DIR": str(demo_dir), "DEMO_LOG_LEVEL": "INFO"}
    env = {k: v for k, v in env.items() if not k.startswith(("AIRFLOW_CONN_", "AIRFLOW__", "AIRFLOW_HOME"))}

    output = _run_demo(env)
    assert "private s3:// sources: 6 rows, 6 done" in output
    assert "presigned URLs in the result table: none" in output
    report = re.search(r"HTML report: +(s3://\S+\.html)\n +local copy: (\S+\.html)", output)
    assert report, output[-3000:]
    page = Path(report.group(2) if os.path.isabs(report.group(2)) else REPO / report.group(2)).read_text()
    assert "<b>32</b> manifest rows · <b>30</b> enhanced" in page
    assert "presigned" in output.lower(), "the run logged its presigning (at INFO), without the URLs"
    assert not PRESIGNED.search(output)
    assert not PRESIGNED.search(page)
    # Every file the run left in the bucket (plan, batches, submission records, results, export).
    for parquet in (demo_dir / "s3").rglob("*.parquet"):
        table = ds.dataset(parquet).to_table()
        for name in table.column_names:
            if str(table.schema.field(name).type) == "string":
                assert not any(PRESIGNED.search(v) for v in table[name].to_pylist() if v), (parquet, name)
    results = ds.dataset(
        demo_dir / "s3" / "results", partitioning="hive", exclude_invalid_files=True
    ).to_table()
    private = [r for r in results.to_pylist() if "/private-sources/" in r["source_url"]]
    assert len(private) == 6 and {r["status"] for r in private} == {"done"}
    assert all(r["source_url"].startswith("s3://leapi-demo/private-sources/") for r in private)
    assert "1 run in the table" in output and "again to see the incremental skip" in output

    again = _run_demo(env)  # what a user does next: every photograph unchanged, nothing paid

    assert re.search(r"^skipped_unchanged +(\d+ +){4}30$", again, re.MULTILINE), again[-3000:]
    assert "credits used by this run: 0 " in again
    assert "2 runs in the table" in again
    assert "again to see the incremental skip" not in again and "--touch 2" in again


def _run_demo(env: dict[str, str]) -> str:
    run = subprocess.run(
        [sys.executable, "scripts/demo_catalog.py"],
        check=False,
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=500,
    )
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-4000:]
    return output
