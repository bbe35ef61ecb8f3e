# The two set-up commands: `make serve` and `make test`. Everything else builds on .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The test and build tools (pytest, Playwright, mypy, shiv, ...), on top of what the server needs.
DEV := $(VENV)/.dev

.PHONY: serve test test-debug lint bench clean dist cluster

# What the server needs, and no more: `make serve` stops here.
$(BIN)/sessiond: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e .
	touch $@

$(DEV): $(BIN)/sessiond
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

serve: $(BIN)/sessiond
	$(BIN)/sessiond serve

test: $(DEV)
	$(BIN)/pytest -q

# The core again under asyncio's debug mode (CI runs it after `make test`).
test-debug: $(DEV)
	PYTHONASYNCIODEBUG=1 $(BIN)/pytest -q -p no:cacheprovider tests/test_stream.py tests/test_stream_direct.py tests/test_fanout_follow.py tests/test_durability.py \
		tests/test_errors.py tests/test_branches.py tests/test_tree_property.py tests/test_store.py

# ruff, and mypy --strict (configured in pyproject.toml) over the core, the edge and the tests (CI runs it).
lint: $(DEV)
	$(BIN)/ruff check server actors bench tests
	$(BIN)/mypy actors server tests

# Three nodes on 127.0.0.1 behind a round-robin proxy on :$(PORT), the nodes on the next ports
# (needs PostgreSQL and Redis): `make cluster PORT=9000`.
PORT ?= 8080
cluster: $(BIN)/sessiond
	$(BIN)/sessiond cluster --nodes 3 --port $(PORT)

bench: $(BIN)/sessiond
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python -m bench stream

# One file to carry: dist/sessiond.pyz runs with `python3 sessiond.pyz serve` on any CPython 3.11
# (3.11.0 and up) on Linux x86_64 (msgspec, uvloop and aiohttp are compiled for 3.11). Packages
# that some 3.11 patch releases need and others do not are named here, because pip resolves
# markers for the Python that builds: redis needs async-timeout below 3.11.3 (Debian 12 has 3.11.2).
DIST ?= dist/sessiond.pyz
DIST_EXTRA := 'async-timeout>=4.0.3'
dist: $(DEV)
	mkdir -p $(dir $(DIST))
	$(BIN)/shiv --quiet --compressed --reproducible -c sessiond -o $(DIST) . $(DIST_EXTRA)
	@echo "built $(DIST)"

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
