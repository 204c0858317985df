# layerwatch: `make demo` shows a broken proxy hop on a local chain; `make test` runs every test.
SHELL := /bin/bash
PYTHON ?= python3
export PATH := $(HOME)/.cache/layerwatch/bin:$(PATH)

# The demo and the lab run from a project virtualenv, so they work where the system Python refuses
# installs (PEP 668, PIP_REQUIRE_VIRTUALENV). `make test` keeps installing into $(PYTHON), as CI does.
VENV ?= .venv
VENV_PYTHON := $(VENV)/bin/python
DEMO_PACKAGES := docker-registry python3-venv
# make lab HARBOR=1: real Harbor v2.15.2 hops (built by hack/build-tools.sh harbor) instead of gateways.
HARBOR ?=
LAB_PACKAGES := $(DEMO_PACKAGES) $(if $(HARBOR),postgresql redis-server)
# make release-manifests RELEASE_REPOSITORY=registry.example.com/platform/layerwatch-manifests
RELEASE_REPOSITORY ?= ghcr.io/layerwatch/manifests/layerwatch
RELEASE_FLAGS ?=

.PHONY: help deps install tools lint typecheck test test-unit demo demo-deps lab release-manifests chart bench image clean

help:
	@echo "make demo     run a check on a local three-hop chain with one faulty hop (in $(VENV)/)"
	@echo "make lab      start that chain with a healthy and a broken artifact; Ctrl-C stops it"
	@echo "make lab HARBOR=1  start edge Harbor -> core Harbor -> origin instead (real Harbor v2.15.2)"
	@echo "make deps     install Debian packages and Python dependencies (needs root for apt)"
	@echo "make tools    build kube-apiserver, etcd, oras, source-controller, helm, harbor... into ~/.cache/layerwatch"
	@echo "make test     lint, type-check and run all tests (unit, registry, k8s, e2e, install, prometheus, browser, image)"
	@echo "make chart    regenerate charts/layerwatch from manifests/ (make lint checks it is current)"
	@echo "make release-manifests  push manifests/ as a Flux OCI artifact to RELEASE_REPOSITORY"
	@echo "make bench    run the benchmarks (JSON on stdout)"
	@echo "make image    build the container image (docker if present, else buildah)"

deps:
	hack/install-deps.sh

install:
	$(PYTHON) -m pip install -q -e '.[test]'

tools:
	hack/build-tools.sh all

lint:
	$(PYTHON) -m ruff check operator tests hack bench
	$(PYTHON) -m ruff format --check operator tests hack bench
	$(PYTHON) hack/dashboard/generate.py --check
	PYTHONPATH=hack $(PYTHON) hack/chart.py --check
	shellcheck hack/*.sh .ci/run

typecheck:
	$(PYTHON) -m mypy

test-unit:
	$(PYTHON) -m pytest -q tests/unit

test: deps install tools lint typecheck
	$(PYTHON) -m pytest -ra -p no:cacheprovider tests

$(VENV_PYTHON):
	$(PYTHON) -m venv $(VENV)

# Only the runtime dependencies (requirements.lock) and layerwatch itself, editable.
$(VENV)/.installed: pyproject.toml requirements.lock | $(VENV_PYTHON)
	$(VENV_PYTHON) -m pip install -q --disable-pip-version-check -r requirements.lock
	$(VENV_PYTHON) -m pip install -q --disable-pip-version-check --no-deps -e .
	touch $@

demo-deps:
	hack/install-deps.sh $(DEMO_PACKAGES)

demo: demo-deps
	$(MAKE) $(VENV)/.installed
	hack/build-tools.sh oras
	PYTHONPATH=hack $(VENV_PYTHON) -m lab.demo

lab:
	hack/install-deps.sh $(LAB_PACKAGES)
	$(MAKE) $(VENV)/.installed
	hack/build-tools.sh oras $(if $(HARBOR),harbor)
	PYTHONPATH=hack $(VENV_PYTHON) -m lab.demo --keep $(if $(HARBOR),--harbor)

chart:
	PYTHONPATH=hack $(PYTHON) hack/chart.py

release-manifests:
	hack/build-tools.sh oras
	PYTHONPATH=hack $(PYTHON) hack/release_manifests.py $(RELEASE_FLAGS) $(RELEASE_REPOSITORY)

bench: install
	$(PYTHON) bench/check_throughput.py

image:
	hack/build-image.sh

clean:
	rm -rf build dist *.egg-info .mypy_cache .ruff_cache
