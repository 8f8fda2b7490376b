"""OpenLineage datasets of the operators and the catalog: what they read and what they write, by dataset.

Each operator's ``get_openlineage_facets_on_complete`` builds its ``OperatorLineage`` from these helpers.
Names follow OpenLineage's naming conventions: ``s3://bucket`` + key, ``file`` + absolute path,
``scheme://host`` + path for other stores and for ``http(s)`` sources. Lineage is at dataset level: a set
of images is reported as the folder (common prefix) that holds them, never one dataset per image, and a
LEAPI pipeline is one dataset (``leapi://<api host>``, ``pipeline/<id>``) that the submit operator writes
and the download/transfer operators read, which joins them in a lineage graph.

The ``openlineage`` packages are imported only inside the functions (the ``[openlineage]`` extra): the
OpenLineage listener calls them in a worker, never at DAG parse time.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Iterable
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from airflow.providers.common.compat.openlineage.facet import Dataset
    from airflow.providers.openlineage.extractors import OperatorLineage

#: Namespace scheme of LEAPI pipelines (``leapi://api.letsenhance.io``).
LEAPI_NAMESPACE_SCHEME = "leapi"


def _namespace_and_path(uri: str) -> tuple[str, str]:
    """``(namespace, path)`` of a URI or local path; the path keeps its leading ``/`` for ``file``."""
    parts = urlsplit(uri)
    if not parts.scheme or parts.scheme in ("file", "local") or len(parts.scheme) == 1:  # (C:\\ on Windows)
        path = parts.path if parts.scheme in ("file", "local") else uri
        return "file", os.path.abspath(path)
    scheme = "s3" if parts.scheme == "s3a" else parts.scheme
    path = parts.path if scheme in ("http", "https") else parts.path.lstrip("/")
    return f"{scheme}://{parts.netloc}", path


def dataset_of(uri: str) -> Dataset:
    """The OpenLineage dataset of one location: ``s3://bucket/key`` -> (``s3://bucket``, ``key``)."""
    from airflow.providers.common.compat.openlineage.facet import Dataset

    namespace, path = _namespace_and_path(uri)
    return Dataset(namespace=namespace, name=path.rstrip("/") or "/")


def folder_datasets(uris: Iterable[str]) -> list[Dataset]:
    """One dataset per namespace: the deepest folder that holds every one of ``uris`` in it."""
    from airflow.providers.common.compat.openlineage.facet import Dataset

    folders: dict[str, list[str]] = {}
    for uri in uris:
        namespace, path = _namespace_and_path(uri)
        folders.setdefault(namespace, []).append(posixpath.dirname(path))
    datasets = []
    for namespace, paths in sorted(folders.items()):
        absolute = paths[0].startswith("/")
        common = posixpath.commonpath(paths) if len(set(paths)) > 1 else paths[0]
        name = (common if absolute or not common else common.lstrip("/")) or "/"
        datasets.append(Dataset(namespace=namespace, name=name))
    return datasets


def pipeline_dataset(api_base_url: str, pipeline_id: int) -> Dataset:
    """A LEAPI pipeline's results as a dataset: (``leapi://<api host>``, ``pipeline/<id>``)."""
    from airflow.providers.common.compat.openlineage.facet import Dataset

    host = urlsplit(api_base_url).netloc or api_base_url
    return Dataset(namespace=f"{LEAPI_NAMESPACE_SCHEME}://{host}", name=f"pipeline/{int(pipeline_id)}")


def operator_lineage(*, inputs: Iterable[Dataset] = (), outputs: Iterable[Dataset] = ()) -> OperatorLineage:
    from airflow.providers.openlineage.extractors import OperatorLineage

    return OperatorLineage(inputs=list(inputs), outputs=list(outputs))
