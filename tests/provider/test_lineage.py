"""OpenLineage: the datasets the operators and the catalog tasks declare, read through the OpenLineage
provider's own extractor machinery (``ExtractorManager`` picks the operator's
``get_openlineage_facets_on_complete``, ``DefaultExtractor`` validates what it returns)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from airflow.providers.openlineage.extractors.base import DefaultExtractor
from airflow.providers.openlineage.extractors.manager import ExtractorManager

from leapi_provider import manifests
from leapi_provider.catalog.settings import CatalogSettings
from leapi_provider.lineage import dataset_of, folder_datasets, pipeline_dataset
from leapi_provider.operators.catalog import (
    LeapiCatalogBatchOperator,
    LeapiCatalogFinalizeOperator,
    LeapiCatalogPlanOperator,
)
from leapi_provider.operators.leapi import LeapiDownloadResultOperator, LeapiSubmitPipelineOperator
from leapi_provider.transfers.leapi_to_s3 import LeapiResultToS3Operator


def _names(datasets: list[Any]) -> list[tuple[str, str]]:
    return [(d.namespace, d.name) for d in datasets]


def _lineage(operator: Any) -> Any:
    """What OpenLineage's listener would get for ``operator`` on success."""
    extractor = ExtractorManager()._get_extractor(operator)
    assert isinstance(extractor, DefaultExtractor), "OpenLineage finds the operator's own method"
    lineage = extractor.extract_on_complete(task_instance=None)
    assert lineage is not None
    return lineage


def test_dataset_names_follow_openlineage_conventions(tmp_path: Path) -> None:
    assert _names([dataset_of("s3://acme-catalog/manifests/2026-06/")]) == [
        ("s3://acme-catalog", "manifests/2026-06")
    ]
    assert _names([dataset_of("s3a://acme/x.parquet")]) == [("s3://acme", "x.parquet")]
    assert _names([dataset_of("s3://acme")]) == [("s3://acme", "/")]
    assert _names([dataset_of(f"file://{tmp_path}/results")]) == [("file", f"{tmp_path}/results")]
    relative = os.path.relpath(tmp_path / "images")
    assert _names([dataset_of(relative)]) == [("file", str(tmp_path / "images"))]
    assert _names([dataset_of("gs://bucket/a/b")]) == [("gs://bucket", "a/b")]
    assert _names([pipeline_dataset("https://api.letsenhance.io/v1/pipeline/42", 42)]) == [
        ("leapi://api.letsenhance.io", "pipeline/42")
    ]  # fmt: skip


def test_a_set_of_images_is_one_dataset_per_store() -> None:
    sources = [
        "s3://private/catalog/shoes/1.jpg",
        "s3://private/catalog/bags/2.jpg",
        "s3://private/catalog/bags/3.jpg",
        "https://cdn.example.com/img/a.jpg",
        "https://cdn.example.com/img/b.jpg",
        "s3://other/top.jpg",
    ]
    assert _names(folder_datasets(sources)) == [
        ("https://cdn.example.com", "/img"),
        ("s3://other", "/"),
        ("s3://private", "catalog"),
    ]


def test_submit_download_and_transfer_join_through_the_pipeline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "AIRFLOW_CONN_LEAPI_DEFAULT",
        '{"conn_type": "leapi", "host": "https://api.letsenhance.io", "password": "key-12345"}',
    )
    submit = LeapiSubmitPipelineOperator(
        task_id="submit",
        source_urls=["https://cdn.example.com/img/a.jpg", "https://cdn.example.com/img/b.jpg"],
        operations=[{"op": "preset/marketplace"}],
    )
    submit._pipeline_id = 42  # (what execute records when the API accepts the pipeline)
    download = LeapiDownloadResultOperator(task_id="download", pipeline_id=42, destination="/tmp/leapi-out")
    download._pipeline_url = "https://api.letsenhance.io/v1/pipeline/42"
    to_s3 = LeapiResultToS3Operator(task_id="to_s3", pipeline_id="42", s3_bucket="acme-cdn")
    to_s3._pipeline_url = "https://api.letsenhance.io/v1/pipeline/42"
    to_s3._written_uris = ["s3://acme-cdn/leapi/marketplace/a.jpg", "s3://acme-cdn/leapi/marketplace/b.jpg"]

    submitted, downloaded, transferred = _lineage(submit), _lineage(download), _lineage(to_s3)

    pipeline = ("leapi://api.letsenhance.io", "pipeline/42")
    assert _names(submitted.inputs) == [("https://cdn.example.com", "/img")]
    assert _names(submitted.outputs) == [pipeline]
    assert _names(downloaded.inputs) == [pipeline] == _names(transferred.inputs)
    assert _names(downloaded.outputs) == [("file", "/tmp/leapi-out")]
    assert _names(transferred.outputs) == [("s3://acme-cdn", "leapi/marketplace")]


def test_catalog_tasks_declare_manifest_in_and_table_and_images_out(tmp_path: Path) -> None:
    settings = CatalogSettings(
        manifest="s3://acme-catalog/manifests/latest/",
        results="s3://acme-catalog/leapi/results",
        images="s3://acme-cdn/enhanced",
        export="s3://acme-catalog/feed",
    )
    batch_file = tmp_path / "batch-00000.parquet"
    manifests.write_parquet_atomic(
        pa.table({"source_url": ["s3://private/catalog/a.jpg", "s3://private/catalog/b.jpg", "https://cdn.example.com/c.jpg"]}),
        batch_file,
    )  # fmt: skip
    plan = LeapiCatalogPlanOperator(task_id="plan")
    batch = LeapiCatalogBatchOperator(task_id="batch", batch_uri=str(batch_file))
    finalize = LeapiCatalogFinalizeOperator(task_id="finalize", export_feed=True)
    for operator in (plan, batch, finalize):
        assert _lineage(operator).inputs == [], "nothing is declared before the task ran"
        operator._settings = settings  # (what execute reads from the run's params)

    planned, batched, finalized = _lineage(plan), _lineage(batch), _lineage(finalize)

    manifest = ("s3://acme-catalog", "manifests/latest")
    images = ("s3://acme-cdn", "enhanced")
    assert _names(planned.inputs) == [manifest] and planned.outputs == []
    assert _names(batched.inputs) == [("https://cdn.example.com", "/"), ("s3://private", "catalog")]
    assert _names(batched.outputs) == [images]
    assert _names(finalized.inputs) == [manifest, images]
    assert _names(finalized.outputs) == [
        ("s3://acme-catalog", "leapi/results"),
        ("s3://acme-catalog", "feed"),
    ]
    finalize._settings = CatalogSettings(**{**settings.__dict__, "dry_run": True})
    assert _lineage(finalize).outputs == [], "a dry run writes no table"
