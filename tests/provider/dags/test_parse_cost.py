"""DAG files stay cheap to parse: the scheduler's dag-processor and every task process parse them.

Parse time itself is a benchmark (``tests/bench/bench_airflow.py``); what is tested here is its cause: no
DAG file pulls in the heavy libraries its tasks use at run time.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.airflow import REPO
from tests.support.docs import snippet

#: Imported by tasks at run time only: each costs 0.1-0.5 s (boto3 through an s3:// Asset URI, pyarrow.dataset
#: pulls in pandas).
HEAVY_MODULES = (
    "pyarrow",
    "pandas",
    "numpy",
    "PIL",
    "boto3",
    "botocore",
    "fsspec",
    "leapi_provider.manifests",
)

DAG_FILES = sorted(
    str(p.relative_to(REPO)) for d in ("dags", "example_dags") for p in (REPO / d).glob("*.py")
)
#: The DAG file docs/install.md gives users (written out by the test).
DOCS_DAG_FILE = "docs/install.md#catalog-dag-file"

_PROBE = """
import importlib.util, json, sys
import airflow.sdk
before = set(sys.modules)
spec = importlib.util.spec_from_file_location("dag_under_test", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
print(json.dumps(sorted(set(sys.modules) - before)))
"""


@pytest.mark.parametrize("dag_file", [*DAG_FILES, DOCS_DAG_FILE])
def test_parsing_imports_nothing_heavy(dag_file: str, tmp_path: Path) -> None:
    if dag_file == DOCS_DAG_FILE:
        written = tmp_path / "leapi_catalog.py"
        written.write_text(snippet("docs/install.md", "catalog-dag-file"))
        dag_file = str(written)
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, dag_file], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    imported = json.loads(done.stdout.strip().splitlines()[-1])
    heavy = sorted(
        {name for name in imported for h in HEAVY_MODULES if name == h or name.startswith(h + ".")}
    )
    assert heavy == [], f"{dag_file} imports {heavy} when parsed: move them into the task code"


def test_the_probe_sees_a_heavy_import(tmp_path) -> None:
    """The check above can fail: a DAG file that imports pyarrow at the top is caught."""
    dag_file = tmp_path / "heavy_dag.py"
    dag_file.write_text("import pyarrow.parquet\n")
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, str(dag_file)], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert "pyarrow" in json.loads(done.stdout.strip().splitlines()[-1])
