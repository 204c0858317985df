# layerwatch: `make demo` shows a broken proxy hop on a local chain; `make test` runs every test.
SHELL := /bin/bash
PYTHON ?= python3
export PATH := $(HOME)/.cache/layerwatch/bin:$(PATH)

.PHONY: help deps install tools lint typecheck test test-unit demo bench image clean

help:
	@echo "make deps     install Debian packages and Python dependencies (needs root for apt)"
	@echo "make tools    build kube-apiserver, etcd, oras, source-controller into ~/.cache/layerwatch"
	@echo "make demo     run a check on a local three-hop chain with one faulty hop"
	@echo "make test     lint, type-check and run all tests (unit, registry, k8s, e2e, prometheus, browser, image)"
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
	shellcheck hack/*.sh .ci/run

typecheck:
	$(PYTHON) -m mypy

test-unit:
	$(PYTHON) -m pytest -q tests/unit

test: deps install tools lint typecheck
	$(PYTHON) -m pytest -ra -p no:cacheprovider tests

demo: deps install
	hack/build-tools.sh oras
	PYTHONPATH=hack $(PYTHON) -m lab.demo

bench: install
	$(PYTHON) bench/check_throughput.py

image:
	hack/build-image.sh

clean:
	rm -rf build dist *.egg-info .mypy_cache .ruff_cache
