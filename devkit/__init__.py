"""The project's development kit: what the tests, the benchmarks, ``make demo``, ``make airflow`` and the
training tools run against, on this machine and on loopback only. No wheel ships it (the root wheel holds
``leapi_provider`` alone; ``leapi`` and ``leapi-server`` are built from ``packages/``).

* :mod:`devkit.server`: ``leapi-server`` on a free 127.0.0.1 port (a subprocess, or in-process on a fake
  clock);
* :mod:`devkit.sources`: the sample photographs, and ``http.server`` servers for them (a folder, a gate)
  or for any request handler;
* :mod:`devkit.source_hosts`: a fast, scriptable keep-alive source host (ETags, gone paths, scripted
  answers, delays) that counts what it was asked;
* :mod:`devkit.s3`: moto's S3 server and the AWS connection pointing at it;
* :mod:`devkit.postgres`, :mod:`devkit.redis`: a PostgreSQL cluster and a ``redis-server`` of their own;
* :mod:`devkit.catalog`: sample catalogs of real photographs and their Parquet manifests;
* :mod:`devkit.airflow_dags`: ``leapi`` connections, DAG files loaded as modules, ``dag.test()`` results;
* :mod:`devkit.airflow_stack` (with :mod:`devkit.airflow_rest` and :mod:`devkit.airflow_processes`): a
  real Airflow (api-server, scheduler, dag-processor, triggerer, Celery workers) driven over its REST API;
* :mod:`devkit.processes`: which processes a run left behind;
* :mod:`devkit.engine_quality`, :mod:`devkit.moods`, :mod:`devkit.onnx_models`: how the engine is judged,
  the colour-mood scenes it must leave alone, and ONNX models built for its tests.

Pytest fixtures over these live in ``tests/fixtures``. Nothing here imports ``tests`` (``tests/test_imports.py``).
"""
