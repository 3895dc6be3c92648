# The two commands a new user needs: `make demo` (the whole flow against the sandbox) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo airflow test lint venv clean

$(BIN)/python:
	@echo "Creating $(VENV) and installing Airflow and the provider into it (the first run takes a few minutes)..."
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

venv: $(BIN)/python
	@echo "Installing the provider into $(VENV) (pip, quiet)..."
	$(BIN)/pip install --quiet -e '.[test]'

# Runs neoleads_send_message and neoleads_wait_for_reply with `airflow dags test` against the built-in
# sandbox and the standalone webhook receiver, then prints the ids each step produced.
demo: venv
	$(BIN)/python scripts/demo.py

# A real Airflow on PostgreSQL (API server with the webhook receiver, scheduler, DAG processor, triggerer)
# plus the sandbox, to click through the UI: prints the URL and the login; Ctrl-C stops everything.
# AIRFLOW_ARGS="--port 8081 --pg-url postgresql+psycopg://user:pass@host/db" to change the defaults.
airflow: venv
	$(BIN)/python scripts/airflow_local.py $(AIRFLOW_ARGS)

test: lint
	$(BIN)/python -m pytest -p no:cacheprovider $(PYTEST_ARGS)

# ruff, and mypy on the package with pyproject.toml's [tool.mypy] configuration.
lint: venv
	$(BIN)/ruff check neoleads_provider dags tests benchmarks scripts
	$(BIN)/ruff format --check neoleads_provider dags tests benchmarks scripts
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .demo build dist *.egg-info
