"""Experiment tracking in MLflow (evotune.tracking): an optional extra, off by default.

Off, the project writes no store and its hook imports nothing of MLflow; on
(``kedro run --params tracking.mlflow=true``), a tiny run through the real command line
records its parameters, the per-generation search metrics, the test metrics, the report
with its figures and the exported model, read back here with MLflow's own client.
The end-to-end test needs the extra (``pip install -e ".[mlflow]"``) and is skipped without it.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
from tiny_project import TINY  # conf/local of the test project: the embedded task at toy sizes

from evotune.errors import EvotuneError, ParameterError
from evotune.tracking import EXTRA, PLUGIN_NAMES, MlflowTrackingHooks, TrackingConfig, generation_metrics, record_metrics

STORE = "data/09_tracking/mlflow.db"


def _no_mlflow(monkeypatch):
    """Imports of MLflow and kedro-mlflow fail, as where the extra is not installed."""
    for name in ("mlflow", "kedro_mlflow", "kedro_mlflow.framework.hooks.mlflow_hook"):
        monkeypatch.setitem(sys.modules, name, None)


def _context(mlflow):
    return SimpleNamespace(params={"tracking": {"mlflow": mlflow}})


def test_tracking_is_off_by_default(base_params):
    assert TrackingConfig.from_params(base_params["tracking"]).mlflow is False


def test_off_the_hook_imports_no_mlflow_and_logs_nothing(monkeypatch):
    _no_mlflow(monkeypatch)
    hook = MlflowTrackingHooks()
    hook.after_context_created(_context(False))
    hook.after_catalog_created(None, {}, {}, {}, "v", {})
    hook.before_pipeline_run({}, None, None)
    hook.after_dataset_saved("generation_summary", pd.DataFrame({"generation": [0], "best_fitness": [0.5]}), None)
    hook.after_pipeline_run({}, None, None)
    assert not hook.active


def test_switched_on_without_the_extra_names_the_install_command(monkeypatch):
    _no_mlflow(monkeypatch)
    with pytest.raises(EvotuneError, match="tracking.mlflow is true") as err:
        MlflowTrackingHooks().after_context_created(_context(True))
    assert EXTRA in str(err.value) and EXTRA == 'pip install -e ".[mlflow]"'


def test_a_bad_switch_names_the_parameter():
    with pytest.raises(ParameterError, match=r"tracking.mlflow must be true or false, got 'yes'"):
        MlflowTrackingHooks().after_context_created(_context("yes"))


def test_the_generation_summary_becomes_step_indexed_metrics():
    table = pd.DataFrame({"generation": [0, 1], "best_fitness": [0.4, 0.3], "mean_fitness": [0.6, float("nan")],
                          "best_mask": ["011", "001"]})
    assert generation_metrics(table) == [("search.best_fitness", 0.4, 0), ("search.mean_fitness", 0.6, 0),
                                         ("search.best_fitness", 0.3, 1)]
    assert record_metrics(SimpleNamespace(), "test") == {}


def test_the_plugin_hook_is_disabled_under_the_name_kedro_matches():
    """Kedro compares DISABLE_HOOKS_FOR_PLUGINS with the distribution's metadata name: kedro_mlflow 2.0.3
    spells it with an underscore, so "kedro-mlflow" alone (as the docs write it) would not match."""
    from evotune import settings

    assert set(PLUGIN_NAMES) <= set(settings.DISABLE_HOOKS_FOR_PLUGINS)
    assert isinstance(settings.HOOKS[0], MlflowTrackingHooks), "tracking must run after the checks (hooks run LIFO)"
    try:
        name = importlib.metadata.metadata("kedro-mlflow")["Name"]
    except importlib.metadata.PackageNotFoundError:
        return
    assert name in PLUGIN_NAMES


# --------------------------------------------------------------------------- through the command line


@pytest.fixture(scope="module")
def project(tmp_path_factory, root):
    dst = tmp_path_factory.mktemp("tracking-project")
    for name in ("pyproject.toml", ".telemetry"):
        shutil.copy2(root / name, dst / name)
    (dst / "src").mkdir()  # the package is imported from the installed project (or PYTHONPATH)
    shutil.copytree(root / "conf", dst / "conf", ignore=shutil.ignore_patterns("local"))
    (dst / "conf" / "local").mkdir()
    (dst / "conf" / "local" / "parameters_tiny.yml").write_text(TINY)
    for layer in (root / "data").iterdir():
        if layer.is_dir():
            (dst / "data" / layer.name).mkdir(parents=True)
    return dst


def kedro(project: Path, args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, KEDRO_DISABLE_TELEMETRY="1", DO_NOT_TRACK="1", MPLBACKEND="Agg", COLUMNS="250")
    return subprocess.run([sys.executable, "-m", "kedro", *args.split()], cwd=project, env=env, capture_output=True,
                          text=True, timeout=900)


def store_files(project: Path) -> set[str]:
    """Anything an MLflow store would leave in the project (its SQLite file, ./mlruns, artifacts)."""
    found = {str(p.relative_to(project)) for p in (project / "data" / "09_tracking").rglob("*")}
    found |= {p.name for p in project.iterdir() if p.name in ("mlruns", "mlflow.db", "mlartifacts")}
    return found


@pytest.mark.integration
def test_a_run_without_tracking_writes_no_store(project):
    """With the extra installed, kedro-mlflow's own hook would open a store for every run."""
    before = store_files(project)
    before_mtime = (project / STORE).stat().st_mtime if (project / STORE).exists() else None
    proc = kedro(project, "run --pipelines source_pretraining")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert store_files(project) == before
    if before_mtime is not None:
        assert (project / STORE).stat().st_mtime == before_mtime


@pytest.mark.integration
def test_a_tracked_run_records_params_metrics_report_and_model(project):
    pytest.importorskip("kedro_mlflow", reason=f"MLflow tracking is an optional extra: {EXTRA}")
    from mlflow.tracking import MlflowClient

    # a run its checks stop starts no MLflow run (the tracking hook runs after them)
    bad = kedro(project, "run --params tracking.mlflow=true,search.generations=abc")
    assert bad.returncode == 1 and "search.generations must be an integer" in bad.stdout + bad.stderr
    proc = kedro(project, "run --params tracking.mlflow=true,fidelity.enabled=false")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "MLflow run" in out and "recorded in sqlite:///data/09_tracking/mlflow.db" in out

    client = MlflowClient(f"sqlite:///{project / STORE}")
    experiment = client.get_experiment_by_name("evotune")
    runs = client.search_runs([experiment.experiment_id])
    assert [r.info.status for r in runs] == ["FINISHED"]
    run = runs[0]

    params = run.data.params
    assert params["search.population"] == "4" and params["search.generations"] == "1"
    assert params["training.epochs"] == "1" and params["retrain.seeds"] == "[559]"

    history = client.get_metric_history(run.info.run_id, "search.best_fitness")
    assert sorted(m.step for m in history) == [0, 1]  # the initial population and one generation
    assert all(0.0 <= m.value <= 1.0 for m in history)
    assert {"search.mean_fitness", "search.best_so_far", "search.n_evaluations"} <= set(run.data.metrics)
    for name in ("test.macro_accuracy_mean", "test.macro_accuracy_std", "test.accuracy_mean", "test.macro_f1_mean"):
        assert 0.0 <= run.data.metrics[name] <= 1.0, name
    assert run.data.metrics["test.n_seeds"] == 1
    assert not any(k.startswith("fidelity.") for k in run.data.metrics)  # switched off: nothing measured

    def listed(path):
        return {Path(f.path).name for f in client.list_artifacts(run.info.run_id, path)}

    assert {"report.md", "figures"} <= listed("report")
    assert {"fitness.png", "confusion_matrix.png"} <= listed("report/figures")
    assert {"exported_model.pt2", "exported_model.json"} <= listed("model")
    report = Path(client.download_artifacts(run.info.run_id, "report/report.md", str(project / "downloaded")))
    assert "figures/fitness.png" in report.read_text()  # its links resolve beside it, as in data/08_reporting/latest
    archive = client.download_artifacts(run.info.run_id, "model/exported_model.pt2", str(project / "downloaded"))
    latest = sorted((project / "data/07_model_output/exported_model.pt2").glob("*/exported_model.pt2"))[-1]
    assert Path(archive).read_bytes() == latest.read_bytes()  # the file the export stage wrote
