# LettinGo on Dagster. `make run` and `make test` do all of the set-up on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export LETTINGO_HOME ?= $(CURDIR)/.lettingo
export GX_ANALYTICS_ENABLED := false
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export MLFLOW_ENABLE_TELEMETRY := false

.PHONY: install run test test-slow lint ui mlflow-ui bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Reinstall only when the declared dependencies change.
$(VENV)/.installed: pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -c constraints.txt -e '.[dev]'
	touch $@

install: $(VENV)/.installed

# The main job: fetch MovieLens-100K and materialize the whole graph under the default preset.
run: install
	$(BIN)/lettingo data fetch movielens-100k
	$(BIN)/lettingo run --preset default

# The fast suite (the `ci` preset): what CI runs.
test: install
	LETTINGO_PRESET=ci $(BIN)/python -m pytest

# Long tests: the default preset end to end, the browser test of the UI.
test-slow: install
	$(BIN)/python -m pytest -m slow

lint: install
	$(BIN)/ruff check lettingo_dagster tests bench
	$(BIN)/ruff format --check lettingo_dagster tests bench

# The Dagster UI on the persistent instance under $(LETTINGO_HOME).
ui: install
	$(BIN)/lettingo ui

# The MLflow UI on the project's tracking store: runs, per-step curves, registered models.
mlflow-ui: install
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(LETTINGO_HOME)/mlflow/mlflow.db --host 127.0.0.1 --port 5000

bench: install
	$(BIN)/python bench/ingest_benchmark.py
	$(BIN)/python bench/generation_benchmark.py
	$(BIN)/python bench/label_scoring_benchmark.py
	$(BIN)/python bench/profiles_rerun_benchmark.py
	$(BIN)/python bench/bootstrap_benchmark.py
	$(BIN)/python bench/scoring_benchmark.py
	$(BIN)/python bench/deterministic_fill_benchmark.py
	$(BIN)/python bench/encoder_benchmark.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

# The team deployment on this machine (docs/scaling-out.md): PostgreSQL, Redis, the MLflow server
# and two Celery workers on loopback ports, data and logs under $(LETTINGO_HOME)/team.
.PHONY: team-up team-down team-status team-run team-ui test-team
TEAM := $(BIN)/python -m lettingo_dagster.deployment
PRESET ?= default

team-up: install
	$(TEAM) up

team-down:
	$(TEAM) down

team-status:
	$(TEAM) status

# The main job through the Celery workers, recorded in PostgreSQL: make team-run PRESET=ci
team-run: install
	$(TEAM) run --preset $(PRESET)

team-ui: install
	$(TEAM) ui

# Stands its own stack up on free ports, runs the ci graph through it, tears it down (minutes).
test-team: install
	$(BIN)/python -m pytest -m slow tests/deployment
