# Relais: every developer and CI entry point. `make test` and `make demo` work on a fresh machine.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: help install lint typecheck unit test demo manifests check-manifests images e2e-kind bench clean

help: ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | column -t -s $$'\t'

$(VENV)/.installed: pyproject.toml constraints.txt hack/install-tools.sh
	@echo ">> creating $(VENV) and installing Relais with its test tools (llama-cpp-python compiles: ~6 min the first time)"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip uv
	$(BIN)/uv pip install --python $(PY) --constraint constraints.txt --editable '.[dev,llm]'
	hack/install-tools.sh $(VENV)
	touch $@

install: $(VENV)/.installed ## create .venv with everything the tests need

lint: install ## ruff lint and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install ## mypy --strict
	$(BIN)/mypy

unit: install ## only the pure unit tests (no processes, no docker)
	$(BIN)/pytest -q tests/operator/test_resources.py tests/operator/test_status.py tests/operator/test_crd.py tests/gateway/test_units.py

test: install lint typecheck ## install, lint, typecheck and run every test
	$(BIN)/pytest

demo: install ## the main job: on a cluster if one is reachable, else the local stack with a real model
	hack/demo.sh

manifests: install ## regenerate the chart's CRD copy and manifests/install.yaml from their sources
	$(PY) hack/manifests.py write

check-manifests: install ## fail when generated manifests drifted from their sources
	$(PY) hack/manifests.py check

images: ## build the operator and gateway images with docker
	hack/build-images.sh

e2e-kind: install ## kind end-to-end: cluster, images, helm install, example model, chat, delete
	deploy/kind/e2e.sh

bench: install ## run the benchmarks (figures printed side by side)
	$(PY) benchmarks/gateway_overhead.py --reference
	$(PY) benchmarks/operator_scale.py

clean: ## remove the virtualenv and caches
	rm -rf $(VENV) .venv-* .mypy_cache .ruff_cache .pytest_cache .hypothesis
