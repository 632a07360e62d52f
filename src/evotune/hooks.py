"""Project hooks: validate parameters before any node runs; pin the export that
``predict`` reads (``predict.model_version``)."""

from __future__ import annotations

import logging
from typing import Any

from kedro.framework.hooks import hook_impl

from .validation import ParameterError, check_export_available, validate_run

log = logging.getLogger(__name__)

#: The catalog entries of one export; `predict.model_version` pins all three to one version.
EXPORT_DATASETS = ("exported_model_weights", "exported_model_archive", "exported_model_metadata")


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
        node_names = [n.name for n in pipeline.nodes]
        validate_run(params, node_names)
        if "predict_images" in node_names:
            check_export_available(catalog, params, [d for d in EXPORT_DATASETS if d in pipeline.inputs()])
        log.info("parameters checked for %d nodes", len(pipeline.nodes))
