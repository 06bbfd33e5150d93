PY ?= .venv/bin/python
export PYTHONDONTWRITEBYTECODE=1

.PHONY: install assets demo test test-slow lint bench bench-quick measure

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

lint:
	$(PY) -m ruff check . && $(PY) -m ruff format --check .
