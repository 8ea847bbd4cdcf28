# Two commands do all the set-up on a fresh machine with Python 3.11:
#   make demo   -> runs the pipeline end to end on the embedded sample data
#   make test   -> runs the test suite
# Both create .venv in the checkout (torch first, pinned to the CPU build), then install the
# project; a second run skips what is already done (the stamp file tracks pyproject.toml).

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
TORCH  := torch==2.13.0

# Offline and quiet: no telemetry, per-project Prefect state, sqlite MLflow in the checkout.
export DO_NOT_TRACK := true
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export MLFLOW_DISABLE_TELEMETRY := true
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION := false
export PREFECT_HOME ?= $(CURDIR)/.prefect
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS := 90
export PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE := 100
export PREFECT_LOGGING_LEVEL ?= WARNING
export PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW := ignore

.PHONY: demo demo-images test test-fast lint docs install clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) not found (set PYTHON=...)"; exit 2; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

install: $(STAMP)

# The demos' flow and task runs log at INFO (PREFECT_LOGGING_LEVEL above would drop them): to
# the Prefect API, so the UI shows every run's log, and to the terminal, which shows the flows'
# own lines as they go (what was read, why training stopped, where the scores landed) but no
# "Finished in state Completed()" line per run (flows/console.py filters the terminal only).
demo demo-images: export PREFECT_LOGGING_LOGGERS_PREFECT_FLOW_RUNS_LEVEL := INFO
demo demo-images: export PREFECT_LOGGING_LOGGERS_PREFECT_TASK_RUNS_LEVEL := INFO

# The demo always uses the local store in the checkout, whatever MLFLOW_TRACKING_URI says, so it
# can never register a demo model on a shared server. Run it twice: the second run registers
# version 2 and takes it through the promotion gate against version 1.
demo: export MLFLOW_TRACKING_URI := sqlite:///$(CURDIR)/mlflow.db
demo: $(STAMP)
	$(BIN)/python -m flows.demo

# The image path end to end on data/mnist (configs/mnist.yml): registers vae-anomaly-mnist,
# scores data/mnist/test and prints where the anomaly maps are. Same local store as `demo`.
demo-images: export MLFLOW_TRACKING_URI := sqlite:///$(CURDIR)/mlflow.db
demo-images: $(STAMP)
	$(BIN)/python -m flows.demo --config configs/mnist.yml

test: $(STAMP)
	$(BIN)/python -m pytest -q

# The edit-test loop: every test that starts no server (no Prefect or MLflow server, worker or
# Dask cluster; conftest.py marks those "server") and does not train on the real datasets.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not server and not slow"

# The documentation site at http://127.0.0.1:8000 (mkdocs.yml; the configuration reference is
# generated from the typed config at build). CI builds it with --strict (tests/test_docs.py).
docs: export NO_MKDOCS_2_WARNING := 1
docs: $(STAMP)
	$(BIN)/mkdocs serve -a 127.0.0.1:8000

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) mlflow.db mlartifacts .prefect runs outputs .pytest_cache site
