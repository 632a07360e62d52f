"""Project pipelines.

* ``__default__``: the embedded offline reproduction, raw data to report:
  source pretraining -> target ingestion and splitting -> backbone (from the
  source model) -> evolutionary search -> retrain -> test -> export -> reporting, with the
  search-fidelity measurement (``fidelity``) between the search and the report.
* ``pretrained``: the same on a backbone with ImageNet weights, a checkpoint
  file or random init (``backbone.weights``), without source pretraining.
* ``search_worker``: an extra worker process for a running search.
* ``compare``: the baselines against BioTune (after a run): the methods of the run's
  ``compare.methods`` only (:func:`select_compare_methods`).
* ``predict``: classify a folder (or a CSV of paths) with the newest exported model.
* ``__default__`` of a run environment whose parameters set ``default_pipeline`` (``conf/paper``:
  ``pretrained``): that pipeline, so that ``kedro run --env paper`` runs the paper's setting
  (:func:`select_default_pipeline`).
* each stage alone: ``source_pretraining``, ``data_processing``, ``backbone``,
  ``search``, ``retrain``, ``fidelity``, ``export``, ``reporting``.

The registry is written out rather than discovered with ``find_pipelines``: Kedro
1.7's discovery imports a module per requested pipeline name, so composite
pipelines such as ``pretrained`` or ``search_worker`` could not be run by name.
"""

from collections.abc import Sequence
from typing import Any

from kedro.pipeline import Pipeline

from .methods import METHODS
from .pipelines import (
    backbone,
    compare,
    data_processing,
    export,
    fidelity,
    predict,
    reporting,
    retrain,
    search,
    source_pretraining,
)

#: the stages after the backbone, shared by ``__default__`` and ``pretrained``
TARGET_STAGES = ("data_processing", "search", "retrain", "fidelity", "export", "reporting")


#: the methods the ``compare`` pipeline is built for (None: every method)
_compare_methods: list[str] | None = None


def select_compare_methods(methods: Any) -> bool:
    """Build ``compare`` for ``methods`` (the run's ``compare.methods``) from now on; whether that changed.

    :class:`evotune.hooks.ComparePipelineHooks` calls it with the merged parameters of each
    session (conf and ``--params``) before the session reads its pipelines, so that
    ``kedro run --pipelines compare --params "compare.methods=[a,b]"`` runs exactly a and b.
    Names that are no method are left out here and reported by the parameter check before
    anything runs (:func:`evotune.validation.validate_run`), as is a value that is no list.
    """
    global _compare_methods
    chosen = [m for m in methods if isinstance(m, str) and m in METHODS] if isinstance(methods, Sequence) \
        and not isinstance(methods, str) else []
    changed = chosen != _compare_methods
    _compare_methods = chosen
    return changed


#: the pipeline ``__default__`` is (the run's ``default_pipeline`` parameter; None: the embedded run)
_default_pipeline: str | None = None


def select_default_pipeline(name: Any) -> bool:
    """Make ``__default__`` the pipeline ``name`` (the run's ``default_pipeline`` parameter; None or a name
    that is no pipeline: the embedded run, and the parameter check names the problem); whether that changed.

    :class:`evotune.hooks.ComparePipelineHooks` calls it with each session's merged parameters before the
    session reads its pipelines: ``conf/paper`` sets ``default_pipeline: pretrained``, so a plain
    ``kedro run --env paper`` runs the paper's setting (ImageNet weights, no source pretraining).
    """
    global _default_pipeline
    chosen = name if isinstance(name, str) and name in DEFAULT_PIPELINE_CHOICES else None
    changed = chosen != _default_pipeline
    _default_pipeline = chosen
    return changed


#: what ``default_pipeline`` may name
DEFAULT_PIPELINE_CHOICES = ("pretrained",)


def stage_pipelines() -> dict[str, Pipeline]:
    """Each stage by name, in the order a full run goes through them."""
    return {
        "source_pretraining": source_pretraining.create_pipeline(),
        "data_processing": data_processing.create_pipeline(),
        "backbone": backbone.create_pipeline(),
        "search": search.create_pipeline(),
        "retrain": retrain.create_pipeline(),
        "fidelity": fidelity.create_pipeline(),
        "export": export.create_pipeline(),
        "reporting": reporting.create_pipeline(),
    }


def register_pipelines() -> dict[str, Pipeline]:
    stages = stage_pipelines()
    target = sum((stages[name] for name in TARGET_STAGES), Pipeline([]))
    registry = {
        **stages,
        "compare": compare.create_pipeline(_compare_methods),
        "predict": predict.create_pipeline(),
        "pretrained": target + backbone.create_pretrained_pipeline(),
        "search_worker": search.create_worker_pipeline(),
    }
    default = registry[_default_pipeline] if _default_pipeline else stages["source_pretraining"] + stages["backbone"] + target
    return {**registry, "__default__": default}
