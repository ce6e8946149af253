# The front door: `make help` lists every target.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=
DEMO_ARGS ?=
INTEGRATION_WORKERS ?= 2

.DEFAULT_GOAL := help
.PHONY: help install host-packages binaries node-binaries kafka images lint format crds test test-unit test-integration e2e bench cluster demo clean

help: ## List the targets
	@grep -hE '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-18s %s\n", $$1, $$2}'

install: $(VENV)/.installed ## Create .venv with Steward (all parts) and the development tools

# uv resolves and installs as pip does, from its cache in ~/.cache/uv in seconds (pip takes over a minute);
# it trusts the system's certificates, as pip does. pip stays in the venv: the image builds make wheels with it.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet uv
	UV_SYSTEM_CERTS=1 $(BIN)/uv pip install --quiet --python $(BIN)/python --upgrade-package pip pip --editable '.[operator,predictor,monitor,report,dev]'
	@touch $@

host-packages: ## Install the Debian packages the demo and tests run for real, when missing (says which)
	harness/host-packages.sh test

binaries: install ## Build kube-apiserver, kube-controller-manager, etcd and helm into ~/.cache/steward (once; needs Go)
	$(BIN)/steward-local build
	$(BIN)/python -m steward_harness.helm

node-binaries: install ## Build a node's kubelet, kube-proxy and kube-scheduler, KServe's controller, Traefik and CoreDNS into ~/.cache/steward (once; needs Go)
	$(BIN)/steward-local build --node
	$(BIN)/python -m steward_harness.upstream kserve-manager traefik coredns prometheus

kafka: install host-packages ## Fetch the Apache Kafka broker's jars from Maven Central into ~/.cache/steward (once; needs Java 17 and Maven)
	$(BIN)/python -m steward_harness.kafka fetch

images: node-binaries host-packages ## Build the predictor, operator, monitor, pause and upstream tools' images offline on a debootstrapped Debian base; checks each, prints sizes
	$(BIN)/python -m steward_harness.images

lint: install ## ruff (lint + format), mypy --strict, import-linter layer contracts
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy contracts/steward_contracts operator/steward_operator predictor/steward_predictor monitor/steward_monitor harness/steward_harness tests bench
	$(BIN)/lint-imports

format: install ## Apply ruff's fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

crds: install ## Regenerate crds/ (and the chart's copy) from operator/steward_operator/specs/
	$(BIN)/python -m steward_operator.crds crds
	cp crds/steward.dev_*.yaml charts/steward/crds/

test: ## Everything: lint, unit, integration and end-to-end tests; prints where the time went
	@MAKE="$(MAKE)" harness/timed-steps.sh install host-packages binaries node-binaries kafka images lint test-unit test-integration e2e

test-unit: install ## Unit tests: pure logic, no processes, seconds
	$(BIN)/pytest -m 'not integration and not e2e' $(PYTEST_ARGS)

test-integration: binaries kafka ## Integration tests against a real control plane (kube-apiserver, etcd, kube-controller-manager) and a real Kafka broker started by the tests; INTEGRATION_WORKERS=2 by default
	$(BIN)/pytest -m integration --numprocesses=$(INTEGRATION_WORKERS) --dist=loadfile --durations=10 $(PYTEST_ARGS)

e2e: binaries node-binaries host-packages kafka ## End to end on a local cluster with a real node, KServe's controller, Traefik and a Kafka broker (root; builds images and tools once)
	$(BIN)/pytest -m e2e --durations=10 $(PYTEST_ARGS)

bench: install binaries kafka ## Benchmarks: serving, batch and stream scoring against baselines, reconcile latency and memory, sequential tests against threshold checks, whole-distribution tests against per-bin and one-bucket ones, paired tests against unpaired, monitor ingestion, command start-up
	$(BIN)/python bench/online.py
	$(BIN)/python bench/batch.py
	$(BIN)/python bench/reconcile.py
	$(BIN)/python bench/sequential.py
	$(BIN)/python bench/distributions.py
	$(BIN)/python bench/paired.py
	$(BIN)/python bench/monitor.py
	$(BIN)/python bench/commands.py
	$(BIN)/python bench/stream.py

demo: binaries ## Play a release story on the local setup: v2 promoted on evidence, a bad v3 rolled back; writes build/demo/timeline.{md,png}
	harness/host-packages.sh demo
	$(BIN)/steward-local demo $(DEMO_ARGS)

cluster: binaries node-binaries host-packages ## Start a local cluster (a real node with KServe and Traefik; root) with the CRDs installed and print a KUBECONFIG line
	$(BIN)/steward-local cluster $(if $(NO_NODE),,--node)

clean: ## Remove .venv and caches in the repository (the built binaries in ~/.cache/steward stay)
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache *.egg-info build
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
