"""Experiment tracking in MLflow: optional, off by default.

Install the extra (``pip install -e ".[mlflow]"``: kedro-mlflow and MLflow) and switch it on
for a run with ``kedro run --params tracking.mlflow=true`` (conf/base/parameters_tracking.yml).
The run is then recorded in the store of ``conf/base/mlflow.yml`` (kedro-mlflow's own
configuration file: a SQLite store and an artifact folder under ``data/09_tracking/``) with

* its parameters: every parameter the run's nodes read, flattened (``search.population``),
  logged by kedro-mlflow's hook;
* the search's per-generation summary (``generation_summary``) as metrics
  ``search.<column>`` with the generation as step: best / mean / worst / best-so-far fitness, ...;
* the test metrics (``test_metrics``: ``test.macro_accuracy_mean``, ``test.accuracy_mean``,
  ``test.macro_f1_mean``, ...) and the search-fidelity numbers (``fidelity.rho``, ...);
* the report and its figures (``report/report.md``, ``report/figures/<name>.png``: the layout of
  ``data/08_reporting/latest/``, so the report's links resolve);
* the exported model (``model/exported_model.pt2``, the ``torch.export`` archive, and
  ``model/exported_model.json``, its classes and preprocessing).

Each is logged when the catalog saves it, from the file the catalog wrote.

Off (the default), :class:`MlflowTrackingHooks` does nothing and imports nothing of MLflow, and
no store is opened or written. kedro-mlflow registers its own hook for every Kedro session when it
is installed (Kedro imports its module, and with it MLflow, for every session);
``settings.py`` disables that hook (``DISABLE_HOOKS_FOR_PLUGINS``) and :class:`MlflowTrackingHooks`
drives the same hook itself, for the runs that switch tracking on.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kedro.framework.hooks import hook_impl

from .errors import EvotuneError
from .params import from_params

log = logging.getLogger(__name__)

#: how to install what tracking needs (named in the error when it is missing)
EXTRA = 'pip install -e ".[mlflow]"'

#: kedro-mlflow's distribution name, as Kedro matches DISABLE_HOOKS_FOR_PLUGINS against it: the
#: wheel's metadata spells it with an underscore (kedro_mlflow 2.0.3); both spellings are listed
PLUGIN_NAMES = ("kedro-mlflow", "kedro_mlflow")

#: the per-generation summary table, logged as step-indexed metrics ``search.<column>``
GENERATION_TABLE = "generation_summary"

#: artifacts (typed records) whose numbers are logged as metrics, with the metric prefix
METRIC_RECORDS = {"test_metrics": "test", "search_fidelity_summary": "fidelity"}

#: files logged as artifacts: catalog entry -> folder in the run's artifacts
#: (and every ``<name>_plot_latest`` figure -> ``report/figures``)
ARTIFACT_FILES = {
    "report_latest": "report",
    "exported_model_archive": "model",
    "exported_model_metadata": "model",
}


@dataclass(frozen=True)
class TrackingConfig:
    """The ``tracking`` parameters (conf/base/parameters_tracking.yml)."""

    mlflow: bool  # record the run in MLflow (needs the optional extra)

    @classmethod
    def from_params(cls, params: Any) -> TrackingConfig:
        return from_params(cls, params, "tracking")


def artifact_folder(dataset_name: str) -> str | None:
    """The folder of the run's artifacts a saved catalog entry goes to; None: not logged."""
    if dataset_name.endswith("_plot_latest"):
        return "report/figures"
    return ARTIFACT_FILES.get(dataset_name)


def saved_file(conf_catalog: dict[str, Any], dataset_name: str, save_version: str | None) -> Path | None:
    """The file the catalog wrote for ``dataset_name`` in this run (Kedro's versioned layout:
    ``<filepath>/<save_version>/<file name>``); None when the entry has no local file."""
    conf = conf_catalog.get(dataset_name)
    if not isinstance(conf, dict) or not conf.get("filepath"):
        return None
    path = Path(str(conf["filepath"]))
    if conf.get("versioned") and save_version:
        path = path / save_version / path.name
    return path if path.is_file() else None


def generation_metrics(table: Any) -> list[tuple[str, float, int]]:
    """``(search.<column>, value, generation)`` for every numeric cell of the generation summary
    (best / mean / worst / best-so-far fitness, evaluations, training seconds, ...)."""
    import pandas as pd

    if table is None or "generation" not in getattr(table, "columns", ()):
        return []
    out = []
    numeric = [c for c in table.columns if c != "generation" and pd.api.types.is_numeric_dtype(table[c])
               and not pd.api.types.is_bool_dtype(table[c])]
    for _, row in table.iterrows():
        step = int(row["generation"])
        for col in numeric:
            if pd.notna(row[col]):
                out.append((f"search.{col}", float(row[col]), step))
    return out


def record_metrics(record: Any, prefix: str) -> dict[str, float]:
    """``<prefix>.<field>`` for every number of a typed record (a dataclass), e.g. ``test.macro_accuracy_mean``;
    None and flags are left out."""
    if not dataclasses.is_dataclass(record) or getattr(record, "enabled", True) is False:
        return {}  # a measurement switched off (fidelity.enabled: false) has no numbers to log
    out = {}
    for f in dataclasses.fields(record):
        value = getattr(record, f.name)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[f"{prefix}.{f.name}"] = float(value)
    return out


def _import_mlflow_hook():
    try:
        from kedro_mlflow.framework.hooks.mlflow_hook import MlflowHook
    except ImportError as exc:
        raise EvotuneError(
            f"tracking.mlflow is true, but MLflow tracking is not installed ({exc}); nothing was run. Install "
            f"the optional extra: {EXTRA} (kedro-mlflow and mlflow), or run without tracking.mlflow=true."
        ) from None
    return MlflowHook


class MlflowTrackingHooks:
    """Records a run in MLflow when ``tracking.mlflow`` is true; otherwise does nothing.

    Switched on, it runs kedro-mlflow's hook (run start and end, the parameters the nodes read,
    the configuration in ``conf/*/mlflow.yml``) and logs the project's metrics and files as the
    catalog saves them. Register it before the hooks that check a run (``settings.HOOKS``):
    Kedro calls hooks in the reverse order, so a run that fails its checks starts no MLflow run.
    """

    def __init__(self) -> None:
        self._engine = None  # kedro-mlflow's MlflowHook, for a run that tracks
        self._conf_catalog: dict[str, Any] = {}
        self._save_version: str | None = None

    @property
    def active(self) -> bool:
        return self._engine is not None

    @hook_impl
    def after_context_created(self, context) -> None:
        self._engine = None
        config = TrackingConfig.from_params(context.params.get("tracking"))
        if not config.mlflow:
            return
        engine = _import_mlflow_hook()()
        engine.after_context_created(context)
        self._engine = engine
        log.info("MLflow tracking on: %s, experiment '%s'", engine.mlflow_config.server.mlflow_tracking_uri,
                 engine.mlflow_config.tracking.experiment.name)

    @hook_impl
    def after_catalog_created(self, catalog, conf_catalog, conf_creds, parameters, save_version, load_versions) -> None:
        if not self.active:
            return
        self._conf_catalog = dict(conf_catalog or {})
        self._save_version = save_version
        self._engine.after_catalog_created(catalog=catalog, conf_catalog=conf_catalog, conf_creds=conf_creds,
                                           parameters=parameters, save_version=save_version,
                                           load_versions=load_versions)

    @hook_impl
    def before_pipeline_run(self, run_params, pipeline, catalog) -> None:
        if self.active:
            self._engine.before_pipeline_run(run_params=run_params, pipeline=pipeline, catalog=catalog)

    @hook_impl
    def before_node_run(self, node, catalog, inputs, is_async) -> None:
        if self.active:
            self._engine.before_node_run(node=node, catalog=catalog, inputs=inputs, is_async=is_async)

    @hook_impl
    def after_dataset_saved(self, dataset_name: str, data: Any, node) -> None:
        if not self.active or self._engine.run_id is None:  # None: mlflow.yml disables this pipeline
            return
        from mlflow.entities import Metric
        from mlflow.tracking import MlflowClient

        client, run_id = MlflowClient(), self._engine.run_id
        now = int(time.time() * 1000)
        if dataset_name == GENERATION_TABLE:
            metrics = [Metric(k, v, now, step) for k, v, step in generation_metrics(data)]
        elif dataset_name in METRIC_RECORDS:
            metrics = [Metric(k, v, now, 0) for k, v in record_metrics(data, METRIC_RECORDS[dataset_name]).items()]
        else:
            metrics = []
        for start in range(0, len(metrics), 1000):  # MLflow takes at most 1000 metrics a batch
            client.log_batch(run_id, metrics=metrics[start:start + 1000])
        folder = artifact_folder(dataset_name)
        path = saved_file(self._conf_catalog, dataset_name, self._save_version) if folder else None
        if path is not None:
            client.log_artifact(run_id, str(path), folder)

    @hook_impl
    def after_pipeline_run(self, run_params, pipeline, catalog) -> None:
        if self.active:
            self._engine.after_pipeline_run(run_params=run_params, pipeline=pipeline, catalog=catalog)
            log.info("MLflow run %s recorded in %s", self._engine.run_id,
                     self._engine.mlflow_config.server.mlflow_tracking_uri)

    @hook_impl
    def on_pipeline_error(self, error, run_params, pipeline, catalog) -> None:
        if self.active:
            self._engine.on_pipeline_error(error=error, run_params=run_params, pipeline=pipeline, catalog=catalog)
