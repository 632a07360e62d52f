# The two commands of README.md:
#   make run   - install the runtime into .venv (first time) and run the default pipeline (`kedro run`)
#   make test  - install the runtime and the test extras into .venv (first time) and run the fast test tier
# make test-all adds the integration tier (docs/guides/testing.md).
# Everything else here is a helper for them.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Two installs into the one venv, each with its stamp: the runtime (`make run`: the project and what it
# imports) and the test install (`make test`: the runtime plus the extras [test,timm]). The test install
# holds the runtime, so it stamps both.
RUN_STAMP := $(VENV)/.installed-run
STAMP := $(VENV)/.installed

# Kedro telemetry is off for the project (.telemetry: consent false); these make
# sure no command ever asks or waits on the network, in CI too.
export KEDRO_DISABLE_TELEMETRY := 1
export DO_NOT_TRACK := 1
export MPLBACKEND := Agg

.PHONY: install run quick test test-integration test-all test-tracking typecheck mutation viz notebook benchmark upgrade constraints

# constraints.txt pins every installed version to what the tests last passed with.
$(RUN_STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e .
	@touch $(RUN_STAMP)

# timm is an optional extra for users (pip install -e ".[timm]", ~40 MB); the test install adds it so
# that its tests run here and in CI.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[test,timm]"
	@touch $(STAMP) $(RUN_STAMP)

install: $(RUN_STAMP)

run: $(RUN_STAMP)
	$(BIN)/kedro run $(ARGS)

# A quicker first run (docs/guides/first-run.md): the default pipeline with 2 generations of the search
# instead of 5, one search seed instead of 3, the search fidelity off. More: make quick PARAMS=key=value,...
QUICK_PARAMS := search.generations=2,search.seeds=[684],fidelity.enabled=false
quick: $(RUN_STAMP)
	$(BIN)/kedro run --params "$(QUICK_PARAMS)$(if $(PARAMS),$(comma)$(PARAMS))" $(ARGS)
comma := ,

# The two test tiers (pytest markers, pyproject.toml): the fast tier is unit tests and in-process pipeline
# runs; the integration tier (marker `integration`) runs CLI subprocesses, SIGKILL, workers and PostgreSQL.
# Tests marked `slow` run only in test-all.
FAST_TIER := not slow and not integration

test: $(STAMP)
	$(BIN)/python -m pytest -m "$(FAST_TIER)" $(ARGS)

test-integration: $(STAMP)
	$(BIN)/python -m pytest -m "integration and not slow" $(ARGS)

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

# both tiers and the slow tests, then the MLflow tracking test in its own venv
test-all: $(STAMP)
	$(BIN)/python -m pytest -m "" $(ARGS)
	$(MAKE) test-tracking

# Mutation testing of the pure modules (genome, evolution, metrics, significance, fidelity statistics):
# mutmut ([tool.mutmut] in pyproject.toml) mutates them in a copy (mutants/) and runs the tests that reach
# each mutant; then the survivors are listed. Long (about an hour on the 2-core machine): not in any tier.
mutation: $(STAMP)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[test,timm,mutation]"
	nice $(BIN)/mutmut run $(ARGS); $(BIN)/mutmut results

# the type checker on src/ (mypy; its settings and the modules not checked yet: pyproject.toml [tool.mypy])
typecheck: $(STAMP)
	$(BIN)/python -m mypy $(ARGS)

viz: $(RUN_STAMP)
	$(BIN)/kedro viz run --no-browser $(ARGS)

benchmark: $(RUN_STAMP)
	$(BIN)/python scripts/benchmark_evaluation.py $(ARGS)

# Jupyter is optional (in neither install): add it, then open the project's notebook server.
notebook: $(RUN_STAMP)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[timm,notebook]"
	$(BIN)/kedro jupyter notebook $(ARGS)

# The documentation site (mkdocs.yml, docs/) into site/, warnings as errors. The docs extra is not in the
# test install: the first `make docs` adds it to $(VENV). NO_MKDOCS_2_WARNING silences MkDocs' banner.
.PHONY: docs
DOCS_STAMP := $(VENV)/.installed-docs

$(DOCS_STAMP): $(STAMP) pyproject.toml constraints.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[docs]"
	@touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict $(ARGS)

# Move to newer releases within pyproject.toml's ranges: a fresh resolve without the pins, then the tests;
# if they pass, `make constraints` records the new versions.
upgrade:
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade -e ".[test,timm]"
	@touch $(STAMP) $(RUN_STAMP)
	$(BIN)/python -m pytest $(ARGS)

constraints: $(STAMP)
	@(grep '^#' constraints.txt; $(BIN)/python -m pip freeze --exclude-editable) > constraints.new
	mv constraints.new constraints.txt
