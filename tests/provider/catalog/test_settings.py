"""Each catalog setting declared once: the DAG params are made from :class:`CatalogSettings`, and the
connections are the DAG author's, never a run's."""

from __future__ import annotations

import dataclasses

import pytest

from leapi_provider.catalog import add_catalog_tasks, catalog_params
from leapi_provider.catalog.settings import CONNECTION_FIELDS, CatalogSettings, param_fields


def test_params_are_made_from_the_settings_defaults_bounds_and_descriptions() -> None:
    params = catalog_params()
    fields = {f.name: f for f in dataclasses.fields(CatalogSettings)}
    assert set(params) == set(fields) - set(CONNECTION_FIELDS), "every setting but the connections"
    defaults = CatalogSettings()
    for name, param in params.items():
        assert param.value == getattr(defaults, name), f"{name}: one default, not two"
        assert param.description == fields[name].metadata["param"]["description"]
    assert params["max_batches"].schema["minimum"] == 1
    assert params["urls_per_pipeline"].schema["maximum"] == 100
    assert params["change_detection"].schema["enum"] == ["headers", "content"]
    # The params round-trip into the same settings.
    values = {name: param.value for name, param in params.items()}
    assert (
        CatalogSettings.from_params(values, leapi_conn_id="leapi_default", aws_conn_id="aws_default")
        == defaults
    )


def test_overrides_are_validated_by_the_params_schema() -> None:
    from airflow.sdk.definitions.param import ParamValidationError

    params = catalog_params(max_batches=8, incremental=True)
    assert params["max_batches"].value == 8 and params["incremental"].value is True
    with pytest.raises(ParamValidationError):
        catalog_params(urls_per_pipeline=0)["urls_per_pipeline"].resolve()
    with pytest.raises(ValueError, match=r"unknown catalog params \['max_batch'\]"):
        catalog_params(max_batch=8)


@pytest.mark.parametrize("name", CONNECTION_FIELDS)
def test_connections_are_never_params(name: str) -> None:
    with pytest.raises(ValueError, match=rf"{name} is not a param: pass it to add_catalog_tasks\({name}="):
        catalog_params(**{name: "someone_elses"})
    with pytest.raises(ValueError, match=rf"{name} cannot be set by a run's params or conf"):
        CatalogSettings.from_params({name: "someone_elses"}, leapi_conn_id="mine", aws_conn_id="mine_too")


def test_the_dag_author_fixes_the_connections_of_every_task() -> None:
    from airflow.sdk import DAG

    with DAG(dag_id="catalog_connections", schedule=None, params=catalog_params()) as dag:
        tasks = add_catalog_tasks(leapi_conn_id="leapi_prod", aws_conn_id="aws_prod", deferrable=True)
    plan, finalize = tasks["plan"], tasks["finalize"]
    for task in (plan, finalize):
        assert (task.leapi_conn_id, task.aws_conn_id) == ("leapi_prod", "aws_prod")
    batch = dag.get_task("batch").partial_kwargs  # (mapped: its arguments are partial ones)
    assert (batch["leapi_conn_id"], batch["aws_conn_id"]) == ("leapi_prod", "aws_prod")
    assert batch["deferrable"] is True and dag.get_task("batch").pool == "leapi"


def test_deferrable_defaults_to_airflow_s_default_deferrable(monkeypatch) -> None:
    from airflow.sdk import DAG

    for value in ("True", "False"):
        monkeypatch.setenv("AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE", value)
        with DAG(dag_id=f"catalog_default_{value}", schedule=None, params=catalog_params()) as dag:
            add_catalog_tasks()
        assert dag.get_task("batch").partial_kwargs["deferrable"] is (value == "True")


def test_every_param_field_has_a_description() -> None:
    for name, spec in param_fields().items():
        assert spec.metadata["param"]["description"], name
