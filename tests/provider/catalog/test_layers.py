"""Imports go one way: the ``leapi`` client, the hook, the catalog's data modules, the operators and
triggers, the DAG wiring. Read from the source (every import, lazy ones inside functions included), and
what a DAG file pays when it imports the catalog."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import leapi_provider

PROVIDER = Path(leapi_provider.__file__).parent
#: The layers, bottom first: a module may import from its own layer and the ones below, never above.
LAYERS = [
    [
        "leapi_provider.exceptions",
        "leapi_provider.utils",
        "leapi_provider.get_provider_info",
        "leapi_provider.hooks",
        "leapi_provider.webhooks",
    ],
    [
        "leapi_provider.results",
        "leapi_provider.manifests",
        "leapi_provider.lineage",
        "leapi_provider.catalog",
    ],
    [
        "leapi_provider.triggers",
        "leapi_provider.operators",
        "leapi_provider.sensors",
        "leapi_provider.transfers",
    ],
    [
        "leapi_provider.catalog.tasks",
        "leapi_provider.catalog.__init__",
        "leapi_provider.catalog.dags",
        "leapi_provider.events",
    ],
]


def _layer(module: str) -> int:
    matches = [
        (len(prefix), level)
        for level, prefixes in enumerate(LAYERS)
        for prefix in prefixes
        if module == prefix or module.startswith(prefix + ".")
    ]
    assert matches, f"{module} belongs to no layer"
    return max(matches)[1]


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module == "leapi_provider":
            found |= {
                f"leapi_provider.{alias.name}" for alias in node.names
            }  # (from leapi_provider import x)
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("leapi_provider"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("leapi_provider")}
    return found


def test_no_module_imports_from_a_layer_above_its_own() -> None:
    wrong = []
    for path in sorted(PROVIDER.rglob("*.py")):
        module = "leapi_provider." + ".".join(path.relative_to(PROVIDER).with_suffix("").parts)
        if module != "leapi_provider.catalog.__init__":  # (the catalog package's facade exports the wiring)
            module = module.removesuffix(".__init__")
        if module == "leapi_provider":
            continue
        for imported in _imports(path):
            if _layer(imported) > _layer(module):
                wrong.append(f"{module} imports {imported}")
    assert wrong == []


def test_importing_the_catalog_for_a_dag_file_stays_cheap() -> None:
    probe = (
        "import sys; import airflow.sdk; before = set(sys.modules); import leapi_provider.catalog; "
        "print(sorted({m.split('.')[0] for m in set(sys.modules) - before}))"
    )
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    for heavy in ("pyarrow", "numpy", "pandas", "httpx", "PIL"):
        assert f"'{heavy}'" not in loaded, f"{heavy} imported at parse time: {loaded}"
