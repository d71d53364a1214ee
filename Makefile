# Fanfare gRPC developer commands. `make run` and `make test` work on a fresh clone:
# each creates .venv and installs what it needs first.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
BUF := node_modules/.bin/buf
VALIDATE_DESCRIPTOR := build/protovalidate.binpb
PROTO_IMAGE := build/fanfare.binpb
# Proto files relative to protos/, the import root.
PROTO_FILES = $(shell cd protos && find fanfare -name '*.proto' | LC_ALL=C sort)
PYTHON_PATHS := src tests tools bench
PROTOC = PATH="$(abspath $(VENV))/bin:$$PATH" $(PY) -m grpc_tools.protoc

.PHONY: help venv run test gen lint breaking fmt proto-image clean

help:
	@echo "make run    create .venv, install, migrate, serve on the embedded defaults"
	@echo "make test   create .venv if needed, run the whole test suite"
	@echo "make gen    regenerate generated/ from protos/"
	@echo "make lint   buf lint + buf breaking (vs main), ruff, mypy --strict"
	@echo "make fmt    ruff format + autofix"

$(INSTALLED): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $@

venv: $(INSTALLED)

$(BUF): package.json package-lock.json
	npm ci --no-audit --no-fund --ignore-scripts --loglevel=error
	@touch $@

run: $(INSTALLED)
	$(VENV)/bin/fanfare-grpc migrate
	@echo "Serving Fanfare gRPC on $${FANFARE_LISTEN:-127.0.0.1:50051} (plaintext, embedded SQLite + in-process cache)."
	@echo "Try: $(VENV)/bin/grpcurl -plaintext $${FANFARE_LISTEN:-127.0.0.1:50051} list"
	@echo "     $(VENV)/bin/grpcurl -plaintext $${FANFARE_LISTEN:-127.0.0.1:50051} grpc.health.v1.Health/Check"
	exec $(VENV)/bin/fanfare-grpc serve

test: $(INSTALLED)
	$(VENV)/bin/pytest

$(VALIDATE_DESCRIPTOR): $(INSTALLED) tools/protovalidate_descriptor.py
	$(PY) tools/protovalidate_descriptor.py $@

gen: $(INSTALLED) $(VALIDATE_DESCRIPTOR)
	rm -rf generated
	mkdir -p generated
	$(PROTOC) -Iprotos --descriptor_set_in=$(VALIDATE_DESCRIPTOR) \
		--python_out=generated --grpc_python_out=generated \
		--mypy_out=generated --mypy_grpc_out=generated \
		$(PROTO_FILES)
	$(PROTOC) --descriptor_set_in=$(VALIDATE_DESCRIPTOR) \
		--python_out=generated --mypy_out=generated \
		buf/validate/validate.proto

proto-image: $(INSTALLED) $(VALIDATE_DESCRIPTOR)
	$(PROTOC) -Iprotos --descriptor_set_in=$(VALIDATE_DESCRIPTOR) \
		--include_imports --include_source_info -o $(PROTO_IMAGE) $(PROTO_FILES)

lint: proto-image $(BUF) breaking
	$(BUF) lint $(PROTO_IMAGE) --path fanfare --config buf.yaml
	$(VENV)/bin/ruff check $(PYTHON_PATHS)
	$(VENV)/bin/ruff format --check $(PYTHON_PATHS)
	$(VENV)/bin/mypy

# buf breaking (FILE rules) of the working tree against the protos on $(BREAKING_AGAINST).
BREAKING_AGAINST ?= main
breaking: proto-image $(BUF)
	@if git cat-file -e "$(BREAKING_AGAINST):protos" 2>/dev/null; then \
		rm -rf build/against && mkdir -p build/against && \
		git archive "$(BREAKING_AGAINST)" protos | tar -x -C build/against && \
		$(PROTOC) -Ibuild/against/protos --descriptor_set_in=$(VALIDATE_DESCRIPTOR) \
			--include_imports --include_source_info -o build/against.binpb \
			$$(cd build/against/protos && find fanfare -name '*.proto' | LC_ALL=C sort) && \
		$(BUF) breaking $(PROTO_IMAGE) --against build/against.binpb --path fanfare --config buf.yaml; \
	else \
		echo "buf breaking: no protos on $(BREAKING_AGAINST) to compare with"; \
	fi

fmt: $(INSTALLED)
	$(VENV)/bin/ruff check --fix $(PYTHON_PATHS)
	$(VENV)/bin/ruff format $(PYTHON_PATHS)

clean:
	rm -rf build .pytest_cache .mypy_cache .ruff_cache
