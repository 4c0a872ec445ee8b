# Two entry points for a new user (see README):
#   make demo  - set up .venv, ingest the bundled SciFact sample with pipelines/offline.toml, answer questions
#   make test  - set up .venv with the test extras and run the whole test suite
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip

.PHONY: demo test setup setup-test clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# The CPU build of torch first: an unpinned torch pulls several GB of CUDA packages.
	$(PIP) install -q torch==2.13.0

setup: $(BIN)/python
	$(PIP) install -q -e ".[offline]"

CONNECTORS := -e connectors/llama-index-retrievers-hybridrag \
	-e connectors/llama-index-postprocessor-hybridrag-rerank -e connectors/langchain-hybridrag

setup-test: $(BIN)/python
	$(PIP) install -q -e ".[test,offline]" $(CONNECTORS)

demo: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m hybridrag.demo

test: setup-test
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) demo-index
