# The README's two commands are `make run` and `make test`; everything else supports them.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 50051
PROTOS := $(shell find protos -name '*.proto')

.PHONY: install proto run test lint typecheck clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip wheel
	$(PIP) install -e '.[local,dev]'
	touch $(STAMP)

install: $(STAMP)

# Regenerates the committed Python stubs from the contract.
proto: $(STAMP)
	$(PY) -m grpc_tools.protoc -Iprotos \
		--python_out=client_stub/python --pyi_out=client_stub/python \
		--grpc_python_out=client_stub/python $(PROTOS)

run: $(STAMP)
	$(VENV)/bin/modelwire serve --host $(HOST) --port $(PORT)

test: $(STAMP)
	$(PY) -m mypy
	$(PY) -m pytest

clean:
	rm -rf $(VENV) build *.egg-info
