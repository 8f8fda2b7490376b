"""Nothing outside ``tests/`` imports from it: the scripts, the training tools, the development kit, the
DAGs and the shipped packages stand on their own (what they share with the tests is in ``devkit/``). Read
from the source, every import included (lazy ones inside functions too)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
#: Folders whose modules must not import ``tests``.
FOLDERS = (
    "devkit",
    "scripts",
    "train",
    "leapi_provider",
    "dags",
    "example_dags",
    "packages/leapi/src",
    "packages/leapi-server/src",
)


def imports_of_tests(source: str) -> list[str]:
    """The ``tests`` modules that ``source`` imports, as ``line: module``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found += [f"{node.lineno}: {name}" for name in names if name == "tests" or name.startswith("tests.")]
    return found


def test_the_check_finds_every_form_of_import() -> None:
    source = (
        "import tests\n"
        "import os, tests.e2e as e2e\n"
        "from tests.fixtures import s3\n"
        "def lazy():\n"
        "    from tests import e2e\n"
        "from testsuite import x\n"
        "from . import tests\n"
    )
    assert imports_of_tests(source) == ["1: tests", "2: tests.e2e", "3: tests.fixtures", "5: tests"]


@pytest.mark.parametrize("folder", FOLDERS)
def test_no_module_outside_tests_imports_tests(folder: str) -> None:
    paths = sorted((REPO / folder).rglob("*.py"))
    assert paths, f"{folder} has no modules: the list of folders is out of date"
    wrong = [
        f"{path.relative_to(REPO)}:{found}" for path in paths for found in imports_of_tests(path.read_text())
    ]
    assert not wrong, "imports from tests/ (move what is shared to devkit/):\n" + "\n".join(wrong)
