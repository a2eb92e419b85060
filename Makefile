# The two commands a new machine needs: `make demo` and `make test`.
# Both install exactly uv.lock into .venv: every package at its locked version and hash.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# uv never downloads a Python of its own, and works on this project's .venv only. Packages are
# installed with their bytecode compiled: every process the product starts (a flow run, a
# worker, the Prefect server) then imports in about half the time, also where
# PYTHONDONTWRITEBYTECODE keeps Python from caching it (measured: 3.3 s -> 1.7 s to import
# Prefect and the project).
UV     := UV_PYTHON_DOWNLOADS=never UV_PROJECT_ENVIRONMENT=$(VENV) $(BIN)/uv
SYNC   := $(UV) sync --locked --extra dev --python $(BIN)/python --compile-bytecode

.PHONY: demo test lint lock upgrade check-lock serve bench bench-sync bench-view bench-nightly bench-roster clean

# A fresh venv gets the uv that uv.lock pins, checked against the hashes the lock records.
$(BIN)/uv: uv.lock
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' \
		|| { echo "demographics-sync needs Python 3.11 or newer (set PYTHON=...)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python .ci/uv_requirement.py uv.lock > $(VENV)/uv-requirement.txt
	$(BIN)/python -m pip install --quiet --require-hashes --no-deps --only-binary :all: \
		-r $(VENV)/uv-requirement.txt
	touch $(BIN)/uv

# Everything but the project first (hatchling among it), then the project, built editable with
# that hatchling: nothing is resolved afresh. --locked refuses a lock that pyproject.toml
# no longer matches (run `make lock`).
$(STAMP): pyproject.toml uv.lock $(BIN)/uv
	$(SYNC) --no-install-project --quiet
	$(SYNC) --quiet
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/demographics demo

test: $(STAMP) check-lock
	$(BIN)/ruff check .
	$(BIN)/python -m compileall -q flows tasks schemas bench tests
	$(BIN)/python -m pytest -q

# Fails when pyproject.toml and uv.lock disagree, or .venv is not exactly the lock.
check-lock: $(STAMP)
	$(UV) lock --check --offline --quiet
	$(SYNC) --check --quiet

# After editing dependencies in pyproject.toml: bring uv.lock in line, changing nothing else.
lock: $(BIN)/uv
	$(UV) lock

# Move to the newest releases pyproject.toml allows: all, or one (make upgrade PACKAGE=polars).
upgrade: $(BIN)/uv
	$(UV) lock $(if $(PACKAGE),--upgrade-package $(PACKAGE),--upgrade)

serve: $(STAMP)
	$(BIN)/demographics serve

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: $(STAMP)
	$(BIN)/python bench/validate.py

bench-sync: $(STAMP)
	$(BIN)/python bench/sync.py

bench-view: $(STAMP)
	$(BIN)/python bench/view.py

bench-nightly: $(STAMP)
	$(BIN)/python bench/nightly.py

# Roster load at scale: first load, same snapshot again, 1 % of users changed (bench/roster_load.py).
STUDENTS ?= 1000000
RUNS     ?= 3
bench-roster: $(STAMP)
	$(BIN)/python bench/roster.py load --students $(STUDENTS) --runs $(RUNS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
