"""The catalog DAGs from the installed provider (``leapi_provider.catalog.dags``): the DAG file that
docs/install.md tells users to put into their DAG folder parses, as Airflow's DagBag parses it, into the
same two DAGs as this repository's ``dags/`` (one source), with the user's locations as defaults."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from devkit.airflow_dags import load_dag
from tests.fixtures.airflow import REPO
from tests.support.docs import snippet

DOC = "docs/install.md"
LOCATIONS = ("manifest", "results", "images", "export")


@pytest.fixture(scope="module")
def docs_dags(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from airflow.dag_processing.dagbag import DagBag

    folder = tmp_path_factory.mktemp("user-dags")
    (folder / "leapi_catalog.py").write_text(snippet(DOC, "catalog-dag-file"))
    bag = DagBag(dag_folder=folder, bundle_path=folder, bundle_name="user-dags")
    assert bag.import_errors == {}
    return bag.dags


def test_the_docs_dag_file_has_both_dags_with_its_locations(docs_dags: dict[str, Any]) -> None:
    assert sorted(docs_dags) == ["catalog_reenhancement", "marketplace_feed_etl"]
    feed, catalog = docs_dags["marketplace_feed_etl"], docs_dags["catalog_reenhancement"]
    assert {name: feed.params[name] for name in LOCATIONS} == {
        "manifest": "s3://acme-feeds/incoming/",
        "results": "s3://acme-feeds/leapi/results",
        "images": "s3://acme-cdn/images",
        "export": "s3://acme-feeds/leapi/export",
    }
    assert catalog.params["manifest"] == "s3://acme-catalog/manifests/" and catalog.params["export"] is None
    assert (feed.schedule, catalog.schedule) == (None, "@daily")
    for dag in (feed, catalog):
        assert sorted(dag.task_ids) == ["batch", "finalize", "plan"]
        assert dag.get_task("batch").pool == "leapi"
    assert [o.name for o in feed.get_task("finalize").outlets] == ["leapi_marketplace_feed_results"]
    assert feed.get_task("finalize").export_feed and not catalog.get_task("finalize").export_feed


@pytest.mark.parametrize(
    ("dag_file", "dag_id"),
    [
        ("dags/marketplace_feed_etl.py", "marketplace_feed_etl"),
        ("dags/catalog_reenhancement.py", "catalog_reenhancement"),
    ],
)
def test_the_repository_dags_are_the_same_dags(docs_dags: dict[str, Any], dag_file: str, dag_id: str) -> None:
    ours, theirs = load_dag(REPO / dag_file, dag_id), docs_dags[dag_id]
    assert _shape(ours) == _shape(theirs)
    assert Path(ours.fileloc).name == Path(dag_file).name


def test_factory_arguments_reach_the_dag() -> None:
    from leapi_provider.catalog.dags import marketplace_feed_etl_dag

    dag = marketplace_feed_etl_dag(
        dag_id="acme_feed",
        manifest="s3://m/",
        results="s3://r",
        images="s3://i",
        export="s3://e",
        schedule="@hourly",
        preset_defaults={"print": {"dpi": 300}},
        params={"urls_per_pipeline": 20},
        tags=["acme"],
    )
    assert (dag.dag_id, dag.schedule, dag.tags) == ("acme_feed", "@hourly", {"acme"})
    assert dag.params["urls_per_pipeline"] == 20 and dag.params["preset_defaults"] == {"print": {"dpi": 300}}
    with pytest.raises(ValueError, match="unknown catalog params"):
        marketplace_feed_etl_dag(manifest="", results="", images="", export="", params={"urls_per_batch": 3})


def _shape(dag: Any) -> dict[str, Any]:
    """What a DAG is, but for its location defaults and where it was defined."""
    params = {name: dag.params[name] for name in dag.params if name not in LOCATIONS}
    tasks = {
        task.task_id: (type(task).__name__, sorted(task.upstream_task_ids), task.pool, task.trigger_rule)
        for task in dag.tasks
    }
    return {
        "schedule": dag.schedule,
        "params": params,
        "tasks": tasks,
        "tags": sorted(dag.tags),
        "doc_md": dag.doc_md,
        "max_active_runs": dag.max_active_runs,
        "default_args": dag.default_args,
        "outlets": [o.name for o in dag.get_task("finalize").outlets],
    }


def test_the_webhook_connection_is_fixed_by_the_dag_author(monkeypatch: pytest.MonkeyPatch) -> None:
    from leapi_provider.catalog.dags import catalog_reenhancement_dag

    plain = catalog_reenhancement_dag(manifest="s3://m/", results="s3://r", images="s3://i")
    hooked = catalog_reenhancement_dag(
        manifest="s3://m/", results="s3://r", images="s3://i", webhook_conn_id="acme_webhooks"
    )
    assert plain.get_task("batch").partial_kwargs["webhook_conn_id"] is None
    assert hooked.get_task("batch").partial_kwargs["webhook_conn_id"] == "acme_webhooks"
    assert "webhook_conn_id" not in hooked.params, "a run's conf cannot choose it"
    # dags/marketplace_feed_etl.py reads LEAPI_FEED_WEBHOOKS_CONN_ID when parsed (unset: no webhooks).
    monkeypatch.setenv("LEAPI_FEED_WEBHOOKS_CONN_ID", "leapi_webhooks_default")
    feed = load_dag(REPO / "dags/marketplace_feed_etl.py", "marketplace_feed_etl")
    assert feed.get_task("batch").partial_kwargs["webhook_conn_id"] == "leapi_webhooks_default"
