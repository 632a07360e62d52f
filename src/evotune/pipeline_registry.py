"""Project pipelines.

* ``__default__``: the embedded offline reproduction, raw data to report:
  source pretraining -> target ingestion and splitting -> backbone (from the
  source model) -> evolutionary search -> retrain -> test -> export -> reporting.
* ``pretrained``: the same on a backbone with ImageNet weights, a checkpoint
  file or random init (``backbone.weights``), without source pretraining.
* ``search_worker``: an extra worker process for a running search.
* ``predict``: classify a folder (or a CSV of paths) with the newest exported model.
* each stage alone: ``source_pretraining``, ``data_processing``, ``backbone``,
  ``search``, ``retrain``, ``export``, ``reporting``, and every other pipeline package
  under ``evotune.pipelines`` (e.g. ``compare``, ``predict``).
"""

import importlib
import pkgutil

from kedro.pipeline import Pipeline

from . import pipelines as _pipelines_package
from .pipelines import backbone, data_processing, export, reporting, retrain, search, source_pretraining

# The stages the composite pipelines are made of.
TARGET_STAGES = {
    "data_processing": data_processing,
    "search": search,
    "retrain": retrain,
    "export": export,
    "reporting": reporting,
}


def _pipeline_packages() -> dict[str, Pipeline]:
    """``create_pipeline()`` of every package under ``evotune.pipelines``, by package name.

    Not ``kedro.framework.project.find_pipelines``: in Kedro 1.x, during ``kedro run
    --pipeline <name>`` it only imports the package named ``<name>`` and raises for a name
    that is no package, so the composite pipelines (``pretrained``, ``search_worker``)
    could not be run by name.
    """
    found = {}
    for info in pkgutil.iter_modules(_pipelines_package.__path__):
        if info.ispkg and not info.name.startswith(("_", ".")):
            module = importlib.import_module(f"{_pipelines_package.__name__}.{info.name}")
            found[info.name] = module.create_pipeline()
    return found


def register_pipelines() -> dict[str, Pipeline]:
    pipelines = _pipeline_packages()
    stages = {name: module.create_pipeline() for name, module in TARGET_STAGES.items()}
    stages["source_pretraining"] = source_pretraining.create_pipeline()
    stages["backbone"] = backbone.create_pipeline()
    pipelines.update(stages)
    target = sum((stages[name] for name in TARGET_STAGES), Pipeline([]))
    pipelines["pretrained"] = target + backbone.create_pretrained_pipeline()
    pipelines["search_worker"] = search.create_worker_pipeline()
    pipelines["__default__"] = stages["source_pretraining"] + stages["backbone"] + target
    return pipelines
