"""Nodes of the search pipeline: thin adapters around :mod:`evotune.search.runner` and
:mod:`evotune.search.confirm`."""

from __future__ import annotations

import pandas as pd

from ...backbones.checkpoint import BackboneCheckpoint
from ...data.split import Split
from ...lineage import check_same_lineage
from ...search.confirm import ConfirmConfig, run_confirmation
from ...search.records import GenomeRecord
from ...search.runner import run_biotune, run_worker
from ...search.store import StudyStore


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


def confirm_pick(backbone: dict, target_train: dict, target_val: dict, search_trials: pd.DataFrame,
                 best_genome: GenomeRecord, confirm_params: dict, search_params: dict, training_params: dict
                 ) -> tuple[pd.DataFrame, GenomeRecord]:
    """The genome the run retrains (``picked_genome``), by ``confirm.rule`` (:mod:`evotune.search.confirm`):
    the search's best (``best``, nothing trained), or the pick among its ``confirm.top_k`` best genomes trained
    again on every search chunk with ``confirm.seeds`` (``confirmed``, ``parsimonious``); and the
    ``confirmation`` table (one row per confirmed genome)."""
    cfg = ConfirmConfig.from_params(confirm_params)
    rerun = "kedro run --from-nodes evolutionary_search (or the whole kedro run)"
    check_same_lineage("confirm_pick", "dataset", {"backbone": backbone, "target_train": target_train,
                                                   "target_val": target_val, "best_genome": best_genome}, rerun)
    check_same_lineage("confirm_pick", "backbone_id", {"backbone": backbone, "best_genome": best_genome}, rerun)
    return run_confirmation(backbone, target_train, target_val, search_trials, best_genome, cfg, search_params,
                            training_params)
