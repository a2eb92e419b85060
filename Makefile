# The two commands a new machine needs: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint serve bench bench-sync bench-view clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' \
		|| { echo "demographics-sync needs Python 3.11 or newer (set PYTHON=...)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/demographics demo

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

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

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
