"""Nodes: retrain the best genome per seed, evaluate on the held-out test split
(thin adapters over :mod:`evotune.retraining` and :mod:`evotune.evaluation`)."""

from __future__ import annotations

import logging

import pandas as pd

from ...backbones.checkpoint import BackboneCheckpoint
from ...data.split import Split
from ...evaluation import TestMetrics, evaluate_variant
from ...lineage import check_same_lineage
from ...retraining import TrainedVariant, retrain_config, retrain_genome, retrain_seeds
from ...search.records import GenomeRecord
from ...training import TrainConfig

log = logging.getLogger(__name__)


def retrain_best_genome(
    backbone: BackboneCheckpoint, target_train: Split, target_val: Split, best_genome: GenomeRecord, retrain_params: dict,
    training_params: dict,
) -> TrainedVariant:
    """Train the best genome on all training chunks, once per seed; keep the best epoch by validation."""
    cfg = retrain_config(training_params, retrain_params)
    rerun = "kedro run --from-nodes evolutionary_search (or the whole kedro run)"
    check_same_lineage("retrain", "dataset", {"backbone": backbone, "target_train": target_train,
                                              "target_val": target_val, "best_genome": best_genome}, rerun)
    check_same_lineage("retrain", "backbone_id", {"backbone": backbone, "best_genome": best_genome}, rerun)
    return retrain_genome(backbone, target_train, target_val, best_genome, retrain_seeds(retrain_params), cfg)


def evaluate_on_test(backbone: BackboneCheckpoint, retrained: TrainedVariant, target_test: Split, training_params: dict
                     ) -> tuple[TestMetrics, pd.DataFrame]:
    """Test every retrained seed once: accuracy, macro accuracy, macro F1, kappa, confusion matrix."""
    cfg = TrainConfig.from_params(training_params)
    rerun = "kedro run --from-nodes retrain_best_genome (or the whole kedro run)"
    check_same_lineage("evaluate_on_test", "dataset",
                       {"backbone": backbone, "retrained_models": retrained, "target_test": target_test}, rerun)
    check_same_lineage("evaluate_on_test", "backbone_id", {"backbone": backbone, "retrained_models": retrained}, rerun)
    return evaluate_variant(backbone, retrained, target_test, cfg)
