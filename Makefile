PY ?= .venv/bin/python
export PYTHONDONTWRITEBYTECODE=1

.PHONY: install assets demo test test-slow test-browser lint typecheck bench bench-quick measure

install:  ## create .venv and install the project (CPU torch here; CUDA torch where available)
	test -d .venv || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "torch==2.13.0" || $(PY) -m pip install -q "torch<=2.14.1"
	$(PY) -m pip install -q -e ".[dev]"

assets: install  ## fetch and prepare the offline models and datasets (idempotent)
	.venv/bin/sanitizer assets

test: install  ## the default test suite (tiny models, real Redis/Postgres/Celery when present)
	$(PY) -m pytest -q

test-slow: install  ## tests on the real pretrained assets
	$(PY) -m pytest -q -m slow

lint: install typecheck  ## ruff (check + format) on everything, mypy on the library, CLI, service and client, no repeated blocks
	$(PY) -m ruff check . && $(PY) -m ruff format --check .
	$(PY) -m pylint --disable=all --enable=duplicate-code --min-similarity-lines=8 --ignore-imports=yes --ignore-signatures=yes sanitizer app workers jobstore sanitizer_cli sanitizer_client benchmarks scripts tests

typecheck: install  ## mypy on sanitizer, sanitizer_cli, app, jobstore, workers, sanitizer_client (settings in pyproject.toml)
	$(PY) -m mypy

demo: assets  ## plant a backdoor, remove it through the embedded service, print ASR/CA before/after
	$(PY) scripts/demo.py

test-browser: install  ## the HTML report rendered in headless chromium (installs Debian chromium if missing)
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium)
	$(PY) -m pytest -q -m browser

bench-quick: assets  ## one small benchmark cell end to end
	$(PY) benchmarks/run.py --quick

bench: assets  ## the full benchmark matrix (resumable; hours on a 2-core CPU)
	$(PY) benchmarks/run.py

measure: install  ## service latency/throughput measurements
	$(PY) benchmarks/service_measure.py
