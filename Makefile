# Everything a fresh machine needs beyond python3 and make is installed here, from the package registries.
SHELL := /bin/bash
export UV_PYTHON_DOWNLOADS := never
export UV_PROJECT_ENVIRONMENT := $(CURDIR)/.venv

WORK := .work
UV_VERSION := 0.13.9
UV := $(WORK)/uv/bin/uv
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: all venv test demo demo-quickstart bench lint build clean train wallpapers

all: test

$(UV):
	python3 -m venv $(WORK)/uv
	$(WORK)/uv/bin/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

# Synced from the committed lock only (--frozen): a fresh machine gets exactly what CI tested.
$(VENV)/.synced: uv.lock pyproject.toml packages/leapi/pyproject.toml packages/leapi-server/pyproject.toml | $(UV)
	$(UV) sync --frozen --all-extras --all-packages --python python3
	touch $@

venv: $(VENV)/.synced

# Lint, format and type checks first: CI fails on any of them before a test runs. Then the catalog under a
# real Airflow with one fault run on the same stack (make e2e FAULTS=1, ~4 min on 2 quiet cores, ~2 of them
# the fault run), then the suite (its summary stays the last lines of the output). Redis: the webhook
# hand-off's tests start their own redis-server.
test: lint postgres redis
	$(MAKE) --no-print-directory e2e FAULTS=1 RUNS=1
	$(PY) -m pytest

# The main job: marketplace_feed_etl over a sample catalog on leapi-server + a local S3 (see docs/catalog.md).
demo: venv
	$(PY) scripts/demo_catalog.py

# The API quick start alone: one photograph through POST / poll / download against leapi-server.
demo-quickstart: venv
	$(PY) scripts/demo.py

bench: venv wallpapers
	$(PY) -m tests.bench

# The Debian wallpaper packages whose photographs the engine is trained and benchmarked on
# (restoration_spec.DEBIAN_PHOTO_PACKAGES; ukui-wallpapers is allowed too but ships no photographs).
# Installed with apt-get when one is missing (we run as root); read from /usr/share/backgrounds.
WALLPAPERS := mate-backgrounds lomiri-wallpapers-16.04 lomiri-wallpapers-20.04
wallpapers:
	@dpkg -s $(WALLPAPERS) >/dev/null 2>&1 || { \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(WALLPAPERS); }

# Retrains the engine's restoration model (packages/leapi-server/src/leapi_server/engine/weights/luma_x2.onnx) in its own
# environment: PyTorch is a training-only tool, never a project dependency (docs/engine.md).
TRAIN_VENV := $(WORK)/train
$(TRAIN_VENV)/.installed: train/requirements.txt
	python3 -m venv $(TRAIN_VENV)
	$(TRAIN_VENV)/bin/pip install --quiet --disable-pip-version-check -r train/requirements.txt
	touch $@

train: $(TRAIN_VENV)/.installed wallpapers
	$(TRAIN_VENV)/bin/python train/train_restoration.py

lint: venv
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

# The three wheels (leapi, airflow_provider_leapi, leapi_server) into dist/.
build: | $(UV)
	$(UV) build --all-packages --out-dir dist

clean:
	rm -rf $(VENV) $(WORK)

# A real Airflow (api-server, scheduler, dag-processor, triggerer; SQLite in .work/e2e/) running
# marketplace_feed_etl headless and checking it through the REST API (tests/e2e). EXECUTOR=celery:
# CeleryExecutor with a Redis broker and two Celery workers. FAULTS=1: then fault runs on the same Airflow
# (SIGKILLs of the triggerer, leapi-server and batch tasks mid-submit and mid-transfer; tests/e2e/faults.py),
# RUNS=n of them (default 1), stopping at the first failure unless KEEP_GOING=1; FAULTS=only: the fault runs
# alone (no plain run first). WEBHOOKS=1: the batches wake on LEAPI's webhooks (receiver on the api-server,
# Redis), checked for <= 1.05 status reads per pipeline and a resume within 2 s of the last webhook;
# EVENTS=1: then a run started by a manifest landing in S3 (tests/e2e/modes.py). make test runs neither: the
# same paths run under a real Airflow in tests/integration/webhooks/test_on_airflow.py (feed runs started by
# S3 events, their batches woken by webhooks), and the 2 s figure is a measurement, not a gate for a loaded CI.
EXECUTOR ?= local
RUNS ?= 1
.PHONY: e2e airflow redis postgres
e2e: venv $(if $(filter celery,$(EXECUTOR))$(filter 1 yes true,$(WEBHOOKS)),redis)
	$(PY) -m tests.e2e --executor $(EXECUTOR) $(if $(filter 1 yes true only,$(FAULTS)),--faults --runs $(RUNS)$(if \
	  $(filter only,$(FAULTS)), --faults-only)$(if $(filter 1 yes true,$(KEEP_GOING)), --keep-going))$(if \
	  $(filter 1 yes true,$(WEBHOOKS)), --webhooks)$(if $(filter 1 yes true,$(EVENTS)), --events)

# The same Airflow with its UI for a person (dags/ and example_dags/ on leapi-server and a local S3,
# state in .work/airflow/); prints the URL, the login and how to trigger each DAG; Ctrl-C stops it.
airflow: venv $(if $(filter celery,$(EXECUTOR)),redis)
	$(PY) scripts/airflow_local.py --executor $(EXECUTOR)

# redis-server from Debian when it is missing (we run as root). Only the binary is used: the stack starts
# its own instance on a free loopback port, so the package's system service is stopped if it started.
redis:
	@command -v redis-server >/dev/null || { \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server \
	  && { service redis-server stop >/dev/null 2>&1 || true; }; }

# PostgreSQL from Debian when it is missing (we run as root). Only the binaries are used: the server tests
# start their own cluster (as the postgres user: initdb refuses root) on a free loopback port, so the
# package's system cluster is stopped if it started (devkit/postgres.py).
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null || { \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql \
	  && { service postgresql stop >/dev/null 2>&1 || true; }; }
