"""Node of the search-fidelity measurement (a thin adapter over :mod:`evotune.fidelity`)."""

from __future__ import annotations

import logging

import pandas as pd

from ...backbones.checkpoint import BackboneCheckpoint
from ...data.split import Split
from ...fidelity import FidelityConfig, FidelitySummary, measure_fidelity, switched_off
from ...lineage import check_same_lineage
from ...retraining import retrain_config
from ...search.config import SearchConfig
from ...search.records import GenomeRecord
from ...training import TrainConfig

log = logging.getLogger(__name__)


def measure_search_fidelity(
    backbone: BackboneCheckpoint, target_train: Split, target_val: Split, target_test: Split, search_population: pd.DataFrame,
    search_trials: pd.DataFrame, best_genome: GenomeRecord, fidelity_params: dict, search_params: dict,
    retrain_params: dict, training_params: dict,
) -> tuple[pd.DataFrame, FidelitySummary]:
    """Rank correlation between the search's score of a genome and its test macro accuracy after
    retraining, over the final population and a few random genomes; with ``fidelity.enabled: false``
    nothing is trained."""
    cfg = FidelityConfig.from_params(fidelity_params)
    search = SearchConfig.from_params(search_params)
    if not cfg.enabled:
        log.info("search fidelity: switched off (fidelity.enabled: false), nothing trained")
        return switched_off(cfg, search)
    rerun = "kedro run --from-nodes evolutionary_search (or the whole kedro run)"
    check_same_lineage("measure_search_fidelity", "dataset", {
        "backbone": backbone, "target_train": target_train, "target_val": target_val, "target_test": target_test,
        "best_genome": best_genome}, rerun)
    check_same_lineage("measure_search_fidelity", "backbone_id", {"backbone": backbone, "best_genome": best_genome},
                       rerun)
    return measure_fidelity(backbone, target_train, target_val, target_test, search_population, search_trials,
                            best_genome, cfg, search, TrainConfig.from_params(training_params),
                            retrain_config(training_params, retrain_params), TrainConfig.from_params(training_params))
