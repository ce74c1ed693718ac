# fishbench: `make sweep` finds the best profile for this machine, `make test` checks everything.
SHELL := /bin/bash
UV ?= uv
VENV ?= $(or $(UV_PROJECT_ENVIRONMENT),.venv)
# torch from PyTorch's own index instead of PyPI's cu130 wheels (README: "Installing torch for your
# driver"): `make setup TORCH_INDEX=cu126` installs it and records the choice in TORCH_INDEX_FILE,
# and from then on every target keeps it: `uv sync` leaves TORCH_PACKAGES alone and `uv run` does
# not re-sync (it would reinstall the locked cu130 wheels). `make torch-pypi` goes back.
TORCH_INDEX_FILE ?= $(VENV)/torch-index
TORCH_INDEX ?= $(shell cat $(TORCH_INDEX_FILE) 2>/dev/null)
TORCH_INDEX_URL ?= https://download.pytorch.org/whl/$(TORCH_INDEX)
TORCH_PACKAGES ?= torch torchaudio
TORCH_VERSION := $(shell sed -n 's/^ *"torch==\([^"]*\)".*/\1/p' pyproject.toml)
KEEP_TORCH = $(if $(TORCH_INDEX),--inexact $(TORCH_PACKAGES:%=--no-install-package %))
RUN := $(strip $(UV) run --frozen $(if $(TORCH_INDEX),--no-sync))
CHECKPOINT ?= checkpoints/openaudio-s1-mini
PYTEST_ARGS ?=
export MLFLOW_PORT ?= 5000
# The service reads HOST and PORT from here, else .env, else its defaults; a UI started beside it
# is pointed at PORT when one is given here (else at API_URL or the service's default address).
SERVICE = $(if $(HOST),HOST=$(HOST)) $(if $(PORT),PORT=$(PORT)) $(RUN) python -m serving
UI_ENV = $(if $(PORT),API_URL=http://127.0.0.1:$(PORT))

.DEFAULT_GOAL := help
.PHONY: help setup torch-pypi setup-system gpu-check gpu-check-dry test test-compile test-fast lint format sweep bench serve-replicas bench-full-size fidelity fidelity-spread serve soak ui ui-streamlit mlflow-ui mlflow-server compare clean

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}'

# Python caches bytecode as it imports; where PYTHONDONTWRITEBYTECODE forbids that, every process
# would recompile what it imports, so the whole environment is compiled once here instead.
setup: ## install uv if missing, then the locked environment (TORCH_INDEX=cu126: torch from PyTorch's index)
	@command -v $(UV) >/dev/null 2>&1 || python3 -m pip install --quiet uv
	$(UV) sync --frozen $(if $(PYTHONDONTWRITEBYTECODE),--compile-bytecode) $(KEEP_TORCH)
ifneq ($(TORCH_INDEX),)
	@$(VENV)/bin/python -c 'import sys, torch; sys.exit(torch.__version__ != "$(TORCH_VERSION)+$(TORCH_INDEX)")' 2>/dev/null \
		|| $(UV) pip install --python $(VENV)/bin/python --reinstall $(TORCH_PACKAGES:%=%==$(TORCH_VERSION)) --index-url $(TORCH_INDEX_URL)
	@echo $(TORCH_INDEX) > $(TORCH_INDEX_FILE)
endif

torch-pypi: ## undo TORCH_INDEX: back to the locked torch wheels from PyPI
	rm -f $(TORCH_INDEX_FILE)
	$(UV) sync --frozen

setup-system: ## Debian chromium, ffmpeg and haproxy for the tests (only what is missing)
	@bash scripts/install-system-packages.sh

test: setup setup-system ## ruff + the whole pytest suite but the compile matrix (CI runs it, then test-compile)
	$(RUN) ruff check .
	$(RUN) ruff format --check .
	$(RUN) pytest -m "not compiled" $(PYTEST_ARGS)

test-compile: setup ## the compile matrix: aot_eager and inductor through service requests, tiny checkpoint
	$(RUN) pytest -m compiled $(PYTEST_ARGS)

test-fast: setup ## ruff + the unit layer only (pure tests, under a minute)
	$(RUN) ruff check .
	$(RUN) pytest -m unit -q $(PYTEST_ARGS)

lint: setup ## ruff check
	$(RUN) ruff check .

format: setup ## ruff format + autofix
	$(RUN) ruff format .
	$(RUN) ruff check --fix .

sweep: setup ## the main job: sweep profiles on this machine, export reports/profile.yaml
	$(RUN) fishbench sweep $(ARGS)

bench: setup ## upstream vs our profiles on a checkpoint (CHECKPOINT=..., ARGS=...)
	$(RUN) fishbench bench --checkpoint $(CHECKPOINT) $(ARGS)

# No `setup` here: a lent GPU machine is offline, so the check runs in whatever environment is there.
gpu-check: ## the GPU check, PART=1..5 or all (each part under 8 min on an H100) into reports/bench/
	bash scripts/gpu-acceptance.sh --part $(or $(PART),all) $(ARGS)

gpu-check-dry: setup ## every part on CPU, tiny checkpoint, compiled rows compiled, into OUT_DIR
	$(RUN) bash scripts/gpu-acceptance.sh --dry-run --out-dir $(or $(OUT_DIR),/tmp/fishbench-gpu-check-dry) $(ARGS)

bench-full-size: setup ## the full-size (860 M) synthetic s1-mini bench, as committed in reports/bench
	@test -d checkpoints/s1-mini-synthetic || $(RUN) fishbench make-checkpoint --preset s1-mini checkpoints/s1-mini-synthetic
	$(RUN) fishbench bench --checkpoint checkpoints/s1-mini-synthetic --frames 64 --repeats 3 $(ARGS)

fidelity: setup ## teacher-forced fidelity of PROFILE against fp32
	$(RUN) fishbench fidelity --checkpoint $(CHECKPOINT) --profile $(or $(PROFILE),reports/profile.yaml)

fidelity-spread: setup ## bf16, int8, int4, nf4 and fp32 int8 against fp32, into reports/fidelity/
	$(RUN) fishbench fidelity --checkpoint $(CHECKPOINT) --spread --frames 64 -o reports/fidelity

serve: setup ## the REST service (HOST, PORT from here, else .env, else 127.0.0.1:8000)
	$(SERVICE)

serve-replicas: setup ## REPLICAS (2) service processes behind HAProxy on HOST:PORT; restarts dead ones
	@bash scripts/install-system-packages.sh >/dev/null
	$(if $(HOST),HOST=$(HOST)) $(if $(PORT),PORT=$(PORT)) $(RUN) python -m serving.replicas --replicas $(or $(REPLICAS),2)

soak: setup ## MINUTES (10) of mixed requests at RATE (2)/s against URL= or a tiny server; RSS, statuses, p50/p95
	@test -n "$(URL)" || test -d checkpoints/tiny-synthetic || $(RUN) fishbench make-checkpoint --preset tiny checkpoints/tiny-synthetic
	$(RUN) python -m serving.soak --minutes $(or $(MINUTES),10) --rate $(or $(RATE),2) $(if $(URL),--url $(URL)) $(if $(PID),--pid $(PID))

ui: setup ## service + Gradio UI (:7860); PORT= moves both
	@trap 'kill 0' EXIT; $(SERVICE) & $(UI_ENV) $(RUN) python ui/gradio_app.py

ui-streamlit: setup ## service + Streamlit UI (:8501); PORT= moves both
	@trap 'kill 0' EXIT; $(SERVICE) & $(UI_ENV) $(RUN) streamlit run ui/streamlit_app.py

mlflow-ui: setup ## MLflow UI on the sweep store (MLFLOW_PORT, 5000); prints the last sweep's trials page
	@$(RUN) python -c 'from harness.sweep.tracking import LOCAL_UI_URL, runs_url; print("last sweep, trials by p50 latency:", runs_url(LOCAL_UI_URL))'
	$(RUN) mlflow ui --backend-store-uri sqlite:///mlflow.db --default-artifact-root ./mlartifacts --port $(MLFLOW_PORT) --workers 1

mlflow-server: setup ## shared MLflow tracking server on PostgreSQL (MLFLOW_PORT, 5000; installs postgresql if missing)
	RUN="$(RUN)" bash scripts/mlflow-server.sh

compare: setup ## champions by hardware from MLFLOW_TRACKING_URI (or mlflow.db) into reports/compare/
	$(RUN) fishbench compare $(ARGS)

clean: ## remove generated checkpoints, MLflow store, caches
	rm -rf checkpoints/tiny-synthetic mlflow.db mlartifacts .pytest_cache .ruff_cache outputs multirun .cache/torch-compile
