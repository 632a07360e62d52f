"""Project hooks: everything a run needs is checked before its first node runs.

1. The parameters of the stages in the run (:func:`evotune.validation.validate_run`):
   every problem in one message.
2. The run's inputs that earlier stages write (``backbone``, ``best_genome``, ...) have
   a saved version; if not, the message names the stage that makes them.
3. When the run ingests the target data: every image file decodes and every class has
   enough images for the splits and the search chunks (``check_target_data``), so bad
   data stops the run before source pretraining, not after it.
4. ``predict``: the export it reads exists, and ``predict.model_version`` pins all three
   export files to one version.

:class:`ComparePipelineHooks` builds the ``compare`` pipeline from the run's
``compare.methods`` (conf and ``--params``), and ``__default__`` from its ``default_pipeline``,
before the session reads its pipelines.
"""

from __future__ import annotations

import logging
from typing import Any

from kedro.framework.hooks import hook_impl

from .errors import InputMismatchError
from .validation import ParameterError, check_export_available, validate_run

log = logging.getLogger(__name__)

#: The catalog entries of one export; `predict.model_version` pins all three to one version.
EXPORT_DATASETS = ("exported_model_weights", "exported_model_archive", "exported_model_metadata")


def producing_stages() -> dict[str, list[str]]:
    """For each dataset a stage writes, the pipelines (by name) that write it."""
    from .pipeline_registry import register_pipelines

    out: dict[str, list[str]] = {}
    for name, pipe in register_pipelines().items():
        if name == "__default__":
            continue
        for ds in pipe.all_outputs():
            out.setdefault(ds, []).append(name)
    return out


def missing_inputs(pipeline, catalog) -> list[str]:
    """The run's free inputs (not parameters) that have no saved version, with the stage to run first."""
    free = sorted(d for d in pipeline.inputs() if d != "parameters" and not d.startswith("params:"))
    absent = [d for d in free if not catalog.exists(d)]
    if not absent:
        return []
    producers = producing_stages()
    lines = []
    for ds in absent:
        stages = [s for s in producers.get(ds, []) if s not in ("pretrained", "search_worker")]
        how = " or ".join(f"`kedro run --pipelines {s}`" for s in stages[:2]) if stages else "a run that writes it"
        lines.append(f"'{ds}' has no saved version yet: it is written by {how} (or by the whole `kedro run`)")
    return lines


def check_saved_backbone(pipeline, catalog, params) -> None:
    """A run that reads a saved ``backbone`` (not made in this run) gets the architecture its parameters
    name: the data folders are shared by every environment, so the newest backbone may come from
    another setting (the embedded run's resnet10 under ``--env paper``, whose resnet50 run is missing)."""
    if "backbone" not in pipeline.inputs() or not isinstance(params.get("backbone"), dict):
        return
    wanted = params["backbone"].get("arch")
    saved = catalog.load("backbone")
    if wanted and saved.arch != wanted:
        how = ("`kedro run --env paper` with the same --params" if "paper" in params else
               "`kedro run --pipelines pretrained` with the same --params (or the whole `kedro run`)")
        raise InputMismatchError(
            f"The newest saved backbone is a {saved.arch} (made {saved.created or 'by an older run'}), "
            f"but this run's parameters ask for backbone.arch {wanted}; nothing was run. Make the backbone and "
            f"the data of this setting first: {how}."
        )


class ValidationHooks:
    @hook_impl
    def after_catalog_created(
        self, catalog, conf_catalog: dict[str, Any], parameters: dict[str, Any], save_version: str,
        load_versions: dict[str, str],
    ) -> None:
        version = ((parameters.get("parameters") or {}).get("predict") or {}).get("model_version")
        if not version:
            return
        from kedro.io import AbstractDataset

        for name in EXPORT_DATASETS:
            given = (load_versions or {}).get(name)
            if given and given != version:
                raise ParameterError(
                    f"predict.model_version is {version} but --load-versions gives {name}:{given}; use one of them."
                )
            if name in conf_catalog:
                catalog[name] = AbstractDataset.from_config(
                    name, conf_catalog[name], load_version=str(version), save_version=save_version
                )

    @hook_impl
    def before_pipeline_run(self, run_params, pipeline, catalog) -> None:
        params = catalog.load("parameters")
        names = [n.name for n in pipeline.nodes]
        validate_run(params, names)
        if "predict_images" in names:
            check_export_available(catalog, params, [d for d in EXPORT_DATASETS if d in pipeline.inputs()])
        absent = missing_inputs(pipeline, catalog)
        if absent:
            raise InputMismatchError("This run needs data that earlier stages write; nothing was run:\n  - "
                                     + "\n  - ".join(absent))
        if "ingest_index" in names:
            from .pipelines.data_processing.nodes import check_target_data
            from .search.config import SearchConfig

            check_target_data(params["data"], SearchConfig.from_params(params["search"]).n_chunks)
        check_saved_backbone(pipeline, catalog, params)
        log.info("parameters and inputs checked for %d nodes", len(names))


class ProgressHooks:
    """The run's ``progress`` parameters choose how long stages show progress (:mod:`evotune.progress`)."""

    @hook_impl
    def before_pipeline_run(self, run_params, pipeline, catalog) -> None:
        from .progress import ProgressConfig, configure

        configure(ProgressConfig.from_params(catalog.load("parameters").get("progress")))

    @hook_impl
    def after_pipeline_run(self, run_params, run_result, pipeline, catalog) -> None:
        from .progress import stop_all

        stop_all()

    @hook_impl
    def on_pipeline_error(self, error, run_params, pipeline, catalog) -> None:
        from .progress import stop_all

        stop_all()


class ComparePipelineHooks:
    @hook_impl
    def after_context_created(self, context) -> None:
        """The ``compare`` pipeline holds the methods of this run's ``compare.methods``; ``__default__`` is the
        run environment's ``default_pipeline`` when it sets one (``conf/paper``: ``pretrained``)."""
        from kedro.framework.project import PACKAGE_NAME, pipelines

        from .pipeline_registry import select_compare_methods, select_default_pipeline

        params = context.config_loader["parameters"]
        compare = params.get("compare")
        changed = select_compare_methods(compare.get("methods") if isinstance(compare, dict) else None)
        changed = select_default_pipeline(params.get("default_pipeline")) or changed  # conf/paper: pretrained
        if changed and PACKAGE_NAME:
            pipelines.configure(f"{PACKAGE_NAME}.pipeline_registry")  # registered again with these methods
