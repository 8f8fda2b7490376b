"""Airflow from outside a scheduler: ``leapi`` connections as ``AIRFLOW_CONN_*`` values, DAG files
imported as modules, and what a finished ``dag.test()`` run left in the metadata DB (its XComs and task
states). For the tests, the benchmarks and ``make demo``.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any


def leapi_connection_json(base_url: str, api_key: str, **extra: object) -> str:
    """An ``AIRFLOW_CONN_*`` JSON value for a ``leapi`` connection."""
    return json.dumps({"conn_type": "leapi", "host": base_url, "password": api_key, "extra": extra})


def load_dag(path: str | Path, dag_id: str) -> Any:
    """Import the DAG file at ``path`` (as a fresh module) and return its DAG ``dag_id``."""
    from airflow.sdk import DAG

    path = Path(path)
    name = f"_leapi_test_dag_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    for value in vars(module).values():
        if isinstance(value, DAG) and value.dag_id == dag_id:
            return value
    raise LookupError(f"no DAG {dag_id!r} in {path}")


def xcom_value(dag_run: Any, task_id: str, key: str = "return_value", map_index: int = -1) -> Any:
    """The XCom ``key`` of ``task_id`` in a finished ``dag.test()`` run, read back from the metadata DB."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = (
            session.query(XComModel)
            .filter_by(
                dag_id=dag_run.dag_id, run_id=dag_run.run_id, task_id=task_id, key=key, map_index=map_index
            )
            .one_or_none()
        )
        if row is None:
            raise LookupError(f"no XCom {key!r} for {task_id!r} in {dag_run.run_id}")
        return XComModel.deserialize_value(row)


def task_states(dag_run: Any) -> dict[str, Any]:
    """``{task_id: (state, try_number)}`` of a finished ``dag.test()`` run."""
    from airflow.utils.session import create_session

    with create_session() as session:
        return {ti.task_id: (ti.state, ti.try_number) for ti in dag_run.get_task_instances(session=session)}
