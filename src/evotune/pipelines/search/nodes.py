"""Nodes of the search pipeline: thin adapters around :mod:`evotune.search.runner`."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd

from ...search.records import GenomeRecord
from ...search.runner import run_biotune, run_worker
from ...search.store import StudyStore

if TYPE_CHECKING:
    from ...backbones.checkpoint import BackboneCheckpoint
    from ...data.split import Split


def run_search(backbone: BackboneCheckpoint, target_train: Split, target_val: Split, search_study_store: StudyStore,
               search_params: dict, training_params: dict) -> tuple[pd.DataFrame, pd.DataFrame, GenomeRecord]:
    """BioTune's evolutionary search: the trials table, the population of every generation and
    the best genome (:func:`evotune.search.runner.run_biotune`)."""
    return run_biotune(backbone, target_train, target_val, search_study_store, search_params, training_params)


def run_search_worker(backbone: BackboneCheckpoint, target_train: Split, target_val: Split, search_study_store: StudyStore,
                      search_params: dict, training_params: dict) -> pd.DataFrame:
    """A worker process of a running search (``kedro run --pipelines search_worker``): trains
    queued evaluations of the same study until the search ends (:func:`evotune.search.runner.run_worker`)."""
    return run_worker(backbone, target_train, target_val, search_study_store, search_params, training_params)
