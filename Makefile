# Two commands: `make run` (set up, then serve on 127.0.0.1:8700) and `make test` (set up, run every test).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat requirements.lock pyproject.toml | sha256sum | cut -c1-12)
# Debian packages (scripts/debian-packages.txt): qemu-img for inspection and conversion; qemu-system, the
# cloud kernel and busybox for the qemu compute driver and its tests; chromium for the console tests.
DEB_PACKAGES := $(shell grep -v '^\#' scripts/debian-packages.txt)
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test deps debs lint bench clean

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
	$(BIN)/stratus serve --data-dir ./var --host 127.0.0.1 --port 8700

lint: deps
	$(BIN)/ruff check src tests bench

test: deps lint
	bash scripts/test.sh

bench: deps
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) var
