# v2server: install, serve, test, regenerate protobuf code, rebuild the bundled models.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PROTO_OUT := v2server/_proto
ARGS ?=

.PHONY: install run test proto proto-check models clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first and pinned: pip takes the CPU build from local disk, not gigabytes of CUDA wheels.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/v2server --model-repository model_repository $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -q $(ARGS)

proto: $(STAMP)
	$(PY) -m grpc_tools.protoc -I proto \
		--python_out=$(PROTO_OUT) --pyi_out=$(PROTO_OUT) --grpc_python_out=$(PROTO_OUT) \
		proto/model_config.proto proto/grpc_service.proto
	# protoc writes top-level imports; the generated modules live inside our package.
	sed -i -E 's/^import (model_config_pb2|grpc_service_pb2)/from . import \1/' $(PROTO_OUT)/*.py $(PROTO_OUT)/*.pyi
	rm -f $(PROTO_OUT)/model_config_pb2_grpc.py

proto-check: proto
	@if [ -n "$$(git status --porcelain -- $(PROTO_OUT))" ]; then \
		git status --porcelain -- $(PROTO_OUT); \
		echo "generated protobuf code is stale: run 'make proto' and commit it" >&2; exit 1; fi

models: $(STAMP)
	$(PY) scripts/build_models.py model_repository

clean:
	rm -rf $(VENV) .pytest_cache
