# Two commands: `make run` (set up, then serve on 127.0.0.1:8700, or `make run PORT=8800`) and `make test` (set up, run every test).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat requirements.lock pyproject.toml | sha256sum | cut -c1-12)
# Debian packages (scripts/debian-packages.txt): qemu-img for inspection and conversion; qemu-system, the
# cloud kernel and busybox for the qemu compute driver and its tests; chromium for the console tests.
DEB_PACKAGES := $(shell grep -v '^\#' scripts/debian-packages.txt)
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PORT ?= 8700
DATA_DIR ?= ./var

.PHONY: run test fuzz deps debs lint bench soak load clean

deps: debs $(STAMP)

debs:
	@missing=""; for p in $(DEB_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; fi

$(STAMP): requirements.lock pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -r requirements.lock
	$(BIN)/pip install -q --disable-pip-version-check --no-deps -e .
	@rm -f $(VENV)/.installed-*; touch $@

run: deps
	$(BIN)/stratus serve --data-dir $(DATA_DIR) --host 127.0.0.1 --port $(PORT)

# ruff on everything; mypy on src/ ([tool.mypy] in pyproject.toml: every `type: ignore` has a code and a reason).
lint: deps
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy

test: deps lint
	bash scripts/test.sh

# The fuzzers alone, longer and with a random seed (README: budget); `make test` runs them small and fixed.
FUZZ_EXAMPLES ?= 200
fuzz: deps
	STRATUS_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) bash scripts/test.sh \
	  tests/api/test_fuzz_actions.py tests/disk/test_gate_fuzz.py

bench: deps
	$(BIN)/python bench/run.py

# The fault-injection tests at length: 30 rounds of five kill -9 (150 kills) instead of `make test`'s 4.
soak: deps
	STRATUS_SOAK_ROUNDS=$${STRATUS_SOAK_ROUNDS:-30} $(BIN)/pytest -q -p no:cacheprovider tests/e2e/test_faults.py
# Load: 50 and 1 SDK clients for 5 minutes each, on SQLite and on PostgreSQL (~25 min; not part of `make test`).
# Writes bench/results-load.md. LOAD_SECONDS=120 for a shorter run.
LOAD_SECONDS ?= 300
load: deps
	$(BIN)/python bench/load.py --matrix --seconds $(LOAD_SECONDS)

clean:
	rm -rf $(VENV) var
