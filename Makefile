# The two commands of README.md:
#   make run   - install into .venv (first time) and run the default pipeline (`kedro run`)
#   make test  - install into .venv (first time) and run the test suite
# Everything else here is a helper for them.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# Kedro telemetry is off for the project (.telemetry: consent false); these make
# sure no command ever asks or waits on the network, in CI too.
export KEDRO_DISABLE_TELEMETRY := 1
export DO_NOT_TRACK := 1
export MPLBACKEND := Agg

.PHONY: install run test test-all test-tracking typecheck viz notebook benchmark upgrade constraints

# constraints.txt pins every installed version to what the tests last passed with. timm is an optional
# extra for users (pip install -e ".[timm]", ~40 MB); make installs it so that its tests run here and in CI.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[test,timm]"
	@touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/kedro run $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest $(ARGS)

# The optional MLflow tracking (extra [mlflow]) in a venv of its own, so that `make` and every kedro
# command stay free of it (mlflow adds ~40 packages, pins pyarrow < 26, and its plugin adds ~5 s to
# each kedro command): its versions are pinned in constraints-mlflow.txt. CI runs it after `make test`.
# It reuses the packages of $(VENV) (torch alone is ~6 GB and minutes to install): a .pth file puts
# $(VENV)'s site-packages on its path after its own, so pip installs here only what differs (mlflow and
# its dependencies, pyarrow and python-dateutil at mlflow's versions), and those come first on import.
MLFLOW_VENV ?= .venv-mlflow
MLFLOW_STAMP := $(MLFLOW_VENV)/.installed
SITE_PACKAGES := import sysconfig; print(sysconfig.get_path("purelib"))

$(MLFLOW_STAMP): $(STAMP) pyproject.toml constraints-mlflow.txt
	rm -rf $(MLFLOW_VENV)
	$(PYTHON) -m venv $(MLFLOW_VENV)
	echo "$$($(BIN)/python -c '$(SITE_PACKAGES)')" > "$$($(MLFLOW_VENV)/bin/python -c '$(SITE_PACKAGES)')/_evotune_main_venv.pth"
	$(MLFLOW_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -c constraints-mlflow.txt -e ".[test,mlflow]"
	@touch $(MLFLOW_STAMP)

test-tracking: $(MLFLOW_STAMP)
	$(MLFLOW_VENV)/bin/python -m pytest tests/test_tracking.py $(ARGS)

test-all: $(STAMP)
	$(BIN)/python -m pytest -m "" $(ARGS)

# the type checker on src/ (mypy; its settings and the modules not checked yet: pyproject.toml [tool.mypy])
typecheck: $(STAMP)
	$(BIN)/python -m mypy $(ARGS)

viz: $(STAMP)
	$(BIN)/kedro viz run --no-browser $(ARGS)

benchmark: $(STAMP)
	$(BIN)/python scripts/benchmark_evaluation.py $(ARGS)

# Jupyter is optional (not in the test install): add it, then open the project's notebook server.
notebook: $(STAMP)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[test,timm,notebook]"
	$(BIN)/kedro jupyter notebook $(ARGS)

# Move to newer releases within pyproject.toml's ranges: a fresh resolve without the pins, then the tests;
# if they pass, `make constraints` records the new versions.
upgrade:
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade -e ".[test,timm]"
	@touch $(STAMP)
	$(BIN)/python -m pytest $(ARGS)

constraints: $(STAMP)
	@(grep '^#' constraints.txt; $(BIN)/python -m pip freeze --exclude-editable) > constraints.new
	mv constraints.new constraints.txt
