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
  through the same :class:`~evotune.search.GenomeEvaluator`, each evaluation
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
import time
from dataclasses import replace

import numpy as np
import pandas as pd

from ...backbones import model_from_checkpoint
from ...evaluation import MethodMetrics, TestMetrics, evaluate_variants
from ...lineage import check_same_lineage, now
from ...methods import SearchMethod, check_compare_params, get_method
from ...report import comparison as report
from ...retraining import TrainedMethod, retrain_config, retrain_search_method, retrain_seeds
from ...retraining import train_plan_method as train_plan
from ...search import GenomeEvaluator, Progress, chunk_data
from ...study import TrialRecorder, config_fingerprint, open_study
from ...training import TrainConfig, Trainer
from ..search.nodes import SearchParams, genome_record, study_name_for

log = logging.getLogger(__name__)

RERUN_DATA = "kedro run --from-nodes split_dataset (or the whole kedro run), then the compare pipeline"


# --------------------------------------------------------------------------- helpers


def chosen(method: str, compare_params: dict) -> bool:
    """Whether ``method`` is to be run (``compare.methods``); validates the compare parameters."""
    check_compare_params(compare_params)
    return method in compare_params["methods"]


def _skipped(method: str) -> dict:
    # only search_baseline's guard uses this; it is never reached, since the pipeline holds only chosen methods
    log.info("compare: %s is not in compare.methods, skipped", method)
    return {"method": method, "skipped": True}


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


def _trials_table(rows: list[dict], block_names: list[str]) -> pd.DataFrame:
    trials = pd.DataFrame(rows)
    if trials.empty:
        return trials
    genes = np.array([r["genes"] for r in rows])
    for i, b in enumerate(block_names):
        trials[f"gene_{b}"] = genes[:, i]
    trials["gene_threshold"] = genes[:, -1]
    if "genotype" in trials:
        trials["genotype"] = trials["genotype"].apply(lambda v: ";".join(f"{x:.6g}" for x in v))
    trials = trials.drop(columns=["genes", "genome"], errors="ignore")
    for col in ("val_accs", "epochs"):
        if col in trials:
            trials[col] = trials[col].apply(lambda v: ";".join(f"{x:.6g}" for x in v))
    return trials


def search_baseline(
    backbone: dict,
    target_train: dict,
    target_val: dict,
    compare_params: dict,
    method_params: dict | None,
    search_params: dict,
    training_params: dict,
    *,
    method: str,
) -> tuple[pd.DataFrame, dict]:
    """Run a search baseline with BioTune's settings and evaluation budget; returns (trials, best genome)."""
    if not chosen(method, compare_params):
        return pd.DataFrame({"skipped": [True]}), _skipped(method)
    m = get_method(method)
    if not isinstance(m, SearchMethod):
        raise ValueError(f"{method} is not a search method")
    params = m.resolve_params(method_params or {})
    t0 = time.perf_counter()
    sp = SearchParams.from_params(search_params)
    cfg = TrainConfig.from_params(training_params)
    check_same_lineage(f"compare.{method}", "dataset",
                       {"backbone": backbone, "target_train": target_train, "target_val": target_val},
                       "kedro run --from-nodes split_dataset (or the whole kedro run), then the compare pipeline")
    evo = sp.evolution()
    n_chunks_data = int(target_train.chunks.max()) + 1
    if n_chunks_data != sp.n_chunks:
        raise ValueError(
            f"The training split has {n_chunks_data} search chunk(s) but search.train_split_pct="
            f"{sp.train_split_pct} asks for {sp.n_chunks}: rerun the data stage after changing it."
        )
    trainer = Trainer(model_from_checkpoint(backbone), cfg, mean=backbone.mean, std=backbone.std)
    chunks = chunk_data(trainer, target_train, target_val, sp.n_chunks)
    block_names = list(trainer.model.block_names)
    named = replace(sp, study_name=f"{sp.study_name}-{method}-{config_fingerprint(params)}")
    study = open_study(sp.storage, study_name_for(named, cfg, backbone, target_train, target_val))
    recorder = TrialRecorder(study, len(block_names) + 1)
    evaluator = GenomeEvaluator(
        trainer, chunks, seeds=sp.seeds, base_lr=cfg.base_lr, force_head=sp.force_head_trainable,
        recorder=recorder, progress=Progress(evo.evaluations), extra_attrs={"arch": backbone.arch, "method": method},
    )
    log.info("%s search on %s: %d evaluations (BioTune's N=%d E=%d G=%d), %d seed(s), %d chunk(s), study %s",
             method, trainer.device, evo.evaluations, evo.population, evo.elite, evo.generations, len(sp.seeds),
             sp.n_chunks, study.study_name)
    outcome = m.search(evaluator, len(block_names), evo, n_chunks=sp.n_chunks, **params)
    # the evaluator's rows carry the training facts, the budget's rows the method's own (e.g. DEFT's genotype)
    by_key = {r["key"]: r for r in outcome.rows}
    rows = [{**by_key[erow["key"]], **erow} for erow in evaluator.rows]
    rows.sort(key=lambda r: r["index"])
    trials = _trials_table(rows, block_names)
    trained = int(sum(len(r.get("val_accs", [])) for r in evaluator.rows))
    best_genome = genome_record(
        outcome.best_genes, fitness=outcome.best_fitness, key=outcome.best_key, arch=backbone.arch,
        block_names=block_names, cfg=cfg, sp=sp, study_name=study.study_name, evaluations=outcome.evaluations,
        trainings=trained, device=str(trainer.device),
        search_seconds=float(sum(float(r.get("seconds", 0.0)) for r in evaluator.rows)),
        method=method, wall_seconds=time.perf_counter() - t0, params=dict(params),
        dataset=backbone.dataset, backbone_id=backbone.backbone_id, created=now(),
        **{k: v for k, v in outcome.extra.items() if k not in ("genotype",)},
    )
    if outcome.extra.get("genotype") is not None:
        best_genome["genotype"] = [float(x) for x in outcome.extra["genotype"]]
    log.info("%s: best genome %s (mask %s) fitness %.4f after %d evaluations", method, outcome.best_key,
             best_genome["mask"],
             outcome.best_fitness, outcome.evaluations)
    return trials, best_genome


def retrain_searched_genome(
    backbone: dict,
    target_train: dict,
    target_val: dict,
    best_genome: dict,
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
                     best_genome: dict, *method_metrics: MethodMetrics) -> pd.DataFrame:
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
