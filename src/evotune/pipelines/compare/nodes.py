"""Nodes of the comparison (SPEC section 6): baselines trained and tested like BioTune.

Thin adapters over the domain modules:

* Plan methods (full fine-tuning, linear probe, surgical, Auto-RGN, L2-SP,
  L1-SP, LoRA): :func:`train_plan_method` trains every variant of the method
  once per seed on the whole training pool with early stopping on validation
  (the training config of BioTune's retrain: ``training`` updated with
  ``retrain.training``), keeping each seed's best state
  (:func:`evotune.retraining.train_plan_method`).
* Search baselines (DEFT, random search, TPE): :func:`search_baseline` runs
  the search with BioTune's settings (``search``, ``training``) and budget
  through the same runner (:func:`evotune.search.runner.run_baseline`), each evaluation
  recorded in its own Optuna study (resumable like BioTune's);
  :func:`retrain_searched_genome` then retrains the best genome exactly as
  BioTune's retrain does (:func:`evotune.retraining.retrain_genome`).
* :func:`evaluate_method` tests every trained variant once as BioTune's test
  does (:func:`evotune.evaluation.evaluate_variants`); the reported variant is
  the best by validation (surgical: the best block).
* :func:`comparison_table` / :func:`comparison_markdown` / :func:`comparison_figure`:
  the paper-style table (BioTune's row from ``test_metrics``,
  ``test_metrics_per_seed`` and ``best_genome``) and accuracy vs trainable-parameter
  share (:mod:`evotune.report.comparison`).

The pipeline holds only the methods of ``compare.methods`` (see
:mod:`evotune.pipelines.compare.pipeline`).
"""

from __future__ import annotations

import logging

import pandas as pd

from ...evaluation import MethodMetrics, TestMetrics, evaluate_variants
from ...lineage import check_same_lineage
from ...methods import SearchMethod, check_compare_params, get_method
from ...report import comparison as report
from ...retraining import TrainedMethod, retrain_config, retrain_search_method, retrain_seeds
from ...retraining import train_plan_method as train_plan
from ...search.records import GenomeRecord
from ...search.runner import run_baseline
from ...search.store import StudyStore
from ...training import TrainConfig

log = logging.getLogger(__name__)

RERUN_DATA = "kedro run --from-nodes split_dataset (or the whole kedro run), then the compare pipeline"


# --------------------------------------------------------------------------- helpers


def _seeds(compare_params: dict) -> list[int]:
    return retrain_seeds(compare_params, "compare")


# --------------------------------------------------------------------------- plan methods


def train_plan_method(
    backbone: dict,
    target_train: dict,
    target_val: dict,
    compare_params: dict,
    method_params: dict | None,
    training_params: dict,
    retrain_params: dict,
    *,
    method: str,
) -> TrainedMethod:
    """Train every variant of a plan method once per seed on the whole training pool."""
    check_compare_params(compare_params)
    cfg = retrain_config(training_params, retrain_params)
    check_same_lineage(f"compare.{method}", "dataset",
                       {"backbone": backbone, "target_train": target_train, "target_val": target_val}, RERUN_DATA)
    return train_plan(backbone, target_train, target_val, method, method_params, _seeds(compare_params), cfg)


# --------------------------------------------------------------------------- search baselines


def search_baseline(
    backbone: dict,
    target_train: dict,
    target_val: dict,
    search_study_store: StudyStore,
    compare_params: dict,
    method_params: dict | None,
    search_params: dict,
    training_params: dict,
    *,
    method: str,
) -> tuple[pd.DataFrame, GenomeRecord]:
    """Run a search baseline with BioTune's settings and evaluation budget; returns (trials, best genome)
    (:func:`evotune.search.runner.run_baseline`)."""
    check_compare_params(compare_params)
    m = get_method(method)
    if not isinstance(m, SearchMethod):
        raise ValueError(f"{method} is not a search method")
    return run_baseline(m, m.resolve_params(method_params or {}), backbone, target_train, target_val,
                        search_study_store, search_params, training_params)


def retrain_searched_genome(
    backbone: dict,
    target_train: dict,
    target_val: dict,
    best_genome: GenomeRecord,
    compare_params: dict,
    training_params: dict,
    retrain_params: dict,
    *,
    method: str,
) -> TrainedMethod:
    """Retrain a search baseline's best genome exactly as BioTune's."""
    check_compare_params(compare_params)
    cfg = retrain_config(training_params, retrain_params)
    rerun = f"kedro run --pipelines compare (its {method} search and retrain together)"
    check_same_lineage(f"compare.{method}.retrain", "dataset", {"backbone": backbone, "target_train": target_train,
                                                                 "target_val": target_val, "best_genome": best_genome},
                       rerun)
    check_same_lineage(f"compare.{method}.retrain", "backbone_id", {"backbone": backbone, "best_genome": best_genome},
                       rerun)
    return retrain_search_method(backbone, target_train, target_val, best_genome, method, _seeds(compare_params), cfg)


# --------------------------------------------------------------------------- test


def evaluate_method(backbone: dict, trained: TrainedMethod, target_test: dict, training_params: dict
                    ) -> tuple[MethodMetrics, pd.DataFrame]:
    """Test every trained variant once; the reported one is the best by mean validation accuracy."""
    cfg = TrainConfig.from_params(training_params)
    rerun = f"kedro run --pipelines compare (its {trained.method} training and test together)"
    check_same_lineage(f"compare.{trained.method}.test", "dataset",
                       {"backbone": backbone, "trained": trained, "target_test": target_test}, rerun)
    check_same_lineage(f"compare.{trained.method}.test", "backbone_id", {"backbone": backbone, "trained": trained},
                       rerun)
    return evaluate_variants(backbone, trained, target_test, cfg)


# --------------------------------------------------------------------------- table and figure


def comparison_table(compare_params: dict, test_metrics: TestMetrics, test_metrics_per_seed: pd.DataFrame,
                     best_genome: GenomeRecord, *method_metrics: MethodMetrics) -> pd.DataFrame:
    """One row per method of ``compare.methods`` (BioTune first), then one ``variant`` row per surgical block
    (:func:`evotune.report.comparison.comparison_table`)."""
    check_compare_params(compare_params)
    return report.comparison_table(compare_params["methods"], test_metrics, test_metrics_per_seed, best_genome,
                                   method_metrics)


def comparison_markdown(table: pd.DataFrame) -> str:
    """The table as markdown, paper-style."""
    return report.comparison_markdown(table)


def comparison_figure(table: pd.DataFrame):
    """Test accuracy vs trainable-parameter share (log x), one point per method, error bars = std."""
    return report.comparison_figure(table)
