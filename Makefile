# The two set-up commands: `make serve` and `make test`. Everything else builds on .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: serve test lint bench clean

$(BIN)/sessiond: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

serve: $(BIN)/sessiond
	$(BIN)/sessiond serve

test: $(BIN)/sessiond
	$(BIN)/pytest -q

lint: $(BIN)/sessiond
	$(BIN)/ruff check server actors bench tests

bench: $(BIN)/sessiond
	$(BIN)/python -m bench stream

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
