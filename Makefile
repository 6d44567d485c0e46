# The two commands: `make up` (set up and run the stack, answer one query) and `make test`.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# pytest-xdist workers: one runs the tests with real processes in order, the others the in-process tests.
TEST_WORKERS ?= 2

.PHONY: up test lint format venv testserver bench bench-smoke clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "Python 3.11 is required ($(PYTHON) not found); set PYTHON=/path/to/python3.11"; exit 2; }
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet ".[dev]"
	@touch $(STAMP)

venv: $(STAMP)

up: $(STAMP)
	$(PY) scripts/dev_up.py

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint
	$(PY) backend/manage.py spectacular --validate --fail-on-warn --file /dev/null
	PYTHONPATH=backend $(VENV)/bin/lint-imports
	$(VENV)/bin/pytest -n $(TEST_WORKERS) --dist loadgroup

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

testserver: $(STAMP)
	cd backend && ../$(PY) -m openai_testserver --port $${PORT:-8089}

bench: $(STAMP)
	$(PY) -m bench

bench-smoke: $(STAMP)
	$(PY) -m bench --smoke

clean:
	rm -rf var vector_db/chroma* vector_db/manifest.json
