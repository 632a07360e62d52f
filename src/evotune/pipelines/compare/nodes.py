"""Nodes of the comparison (SPEC section 6): BioTune and the baselines, trained and tested alike
on ``compare.resamplings`` resamplings of the data split.

Thin adapters over the domain modules:

* :func:`resample_splits` (node ``compare.resample``): the ``R`` resamplings of the run's split
  (:mod:`evotune.data.resampling`; resampling 0 is the run's own split), one artifact every
  method node reads. Each method node loops over them internally, the backbone recorded as used
  with each resampling (:func:`evotune.data.resampling.on_resampling`).
* BioTune (:func:`search_biotune`): its own search on each resampling
  (:func:`evotune.search.runner.run_biotune`, same study store and study naming: on resampling 0
  the study is the default run's, so its trials are reused, not trained again), then its best
  genome retrained and tested like the search baselines'.
* Plan methods (full fine-tuning, linear probe, surgical, Auto-RGN, L2-SP, L1-SP, LoRA):
  :func:`train_plan_method` trains every variant of the method once per seed on the whole
  training pool with early stopping on validation (the training config of BioTune's retrain:
  ``training`` updated with ``retrain.training``), keeping each seed's best state
  (:func:`evotune.retraining.train_plan_method`).
* Search baselines (DEFT, random search, TPE): :func:`search_baseline` runs the search with
  BioTune's settings (``search``, ``training``) and budget through the same runner
  (:func:`evotune.search.runner.run_baseline`), each evaluation recorded in its own Optuna study
  (resumable like BioTune's); :func:`retrain_searched_genome` then retrains the best genome
  exactly as BioTune's retrain does (:func:`evotune.retraining.retrain_genome`).
* BioTune's pick rules (``biotune_confirmed``, ``biotune_parsimonious``): :func:`confirm_biotune_genomes` trains
  the confirmation of BioTune's search on each resampling once (:func:`evotune.search.confirm.confirm_candidates`),
  and each rule's :func:`pick_confirmed_genomes` picks from it (:func:`evotune.search.confirm.pick_genome`),
  so the rules are compared on the same confirmation trainings.
* :func:`evaluate_method` tests every trained variant once per resampling as BioTune's test does
  (:func:`evotune.evaluation.evaluate_variants`, the reported variant the best by validation on
  that resampling) and combines the resamplings (:func:`evotune.evaluation.combine_resamplings`).
* :func:`comparison_table` / :func:`comparison_markdown` / :func:`comparison_figure`: the table
  with its confidence intervals and verdicts (:mod:`evotune.report.comparison`,
  :mod:`evotune.report.significance`) and macro accuracy vs trainable-parameter share.

The pipeline holds only the methods of ``compare.methods``, and BioTune (see
:mod:`evotune.pipelines.compare.pipeline`).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator

import numpy as np
import pandas as pd

from ...backbones.checkpoint import BackboneCheckpoint
from ...data.resampling import SplitResamplings, has_official_test, make_resamplings, on_resampling
from ...data.split import Split
from ...errors import InputMismatchError
from ...evaluation import MethodMetrics, combine_resamplings, evaluate_variants
from ...lineage import check_same_lineage, now
from ...methods import BIOTUNE, PickMethod, SearchMethod, check_compare_params, get_method
from ...params import check_type, require
from ...report import budget as budgets
from ...report import comparison as report
from ...retraining import BestGenomes, TrainedMethod, retrain_config, retrain_search_method, retrain_seeds
from ...retraining import train_plan_method as train_plan
from ...search.config import SearchConfig
from ...search.confirm import ConfirmConfig, confirm_candidates, pick_genome
from ...search.records import GenomeRecord, genome_record
from ...search.runner import run_baseline, run_biotune
from ...search.store import StudyStore
from ...training import TrainConfig
from ..data_processing.nodes import split_options

log = logging.getLogger(__name__)

RERUN_DATA = "kedro run --from-nodes split_dataset (or the whole kedro run), then the compare pipeline"
RERUN_RESAMPLE = "kedro run --pipelines compare (its resample node and the methods together)"


# --------------------------------------------------------------------------- helpers


def _seeds(compare_params: dict) -> list[int]:
    return retrain_seeds(compare_params, "compare")


def _resamplings(compare_params: dict) -> int:
    return check_type(require(compare_params, "resamplings", "compare"), int, "compare.resamplings")


def _each_resampling(stage: str, backbone, target_train: Split, target_val: Split, target_test: Split,
                     resamplings: SplitResamplings, compare_params: dict | None = None) -> Iterator[tuple]:
    """``(r, backbone_r, train_r, val_r, test_r)`` for each resampling, after checking that the inputs belong
    together (and, with ``compare_params``, that there are ``compare.resamplings`` of them)."""
    check_same_lineage(stage, "dataset", {"backbone": backbone, "target_train": target_train, "target_val": target_val,
                                          "target_test": target_test, "compare_resamplings": resamplings}, RERUN_DATA)
    if compare_params is not None and len(resamplings) != _resamplings(compare_params):
        raise InputMismatchError(
            f"{stage}: compare_resamplings holds {len(resamplings)} resampling(s) but compare.resamplings is "
            f"{_resamplings(compare_params)}; nothing was run. Make them again together: {RERUN_RESAMPLE}."
        )
    for r, train, val, test in resamplings.each(target_train, target_val, target_test):
        log.info("%s: resampling %d/%d (dataset %s)", stage, r + 1, len(resamplings), train.dataset)
        yield r, on_resampling(backbone, train), train, val, test


# --------------------------------------------------------------------------- resamplings


def resample_splits(target_train: Split, target_val: Split, target_test: Split, target_index: pd.DataFrame,
                    data_params: dict, compare_params: dict) -> SplitResamplings:
    """The ``compare.resamplings`` resamplings of the run's split (:mod:`evotune.data.resampling`)."""
    check_compare_params(compare_params)
    opts = split_options(data_params)
    check_same_lineage("compare.resample", "dataset", {"target_train": target_train, "target_val": target_val,
                                                       "target_test": target_test}, RERUN_DATA)
    fixed = has_official_test(target_index, opts["respect_official_splits"])
    out = make_resamplings(target_train, target_val, target_test, _resamplings(compare_params),
                           split_seed=opts["seed"], fixed_test=fixed, created=now())
    log.info("%d resampling(s) of the split (data.split.seed %d%s): %s", len(out), opts["seed"],
             ", the official test split fixed" if fixed else "", ", ".join(r.dataset for r in out.resamplings))
    return out


# --------------------------------------------------------------------------- plan methods


def train_plan_method(
    backbone: BackboneCheckpoint,
    target_train: Split,
    target_val: Split,
    target_test: Split,
    compare_resamplings: SplitResamplings,
    compare_params: dict,
    method_params: dict | None,
    training_params: dict,
    retrain_params: dict,
    *,
    method: str,
) -> list[TrainedMethod]:
    """On each resampling, every variant of a plan method trained once per seed on the whole training pool."""
    check_compare_params(compare_params)
    cfg = retrain_config(training_params, retrain_params)
    return [train_plan(bb, train, val, method, method_params, _seeds(compare_params), cfg)
            for _, bb, train, val, _ in _each_resampling(f"compare.{method}", backbone, target_train, target_val,
                                                         target_test, compare_resamplings, compare_params)]


# --------------------------------------------------------------------------- searches


def _searches(stage: str, run, backbone, target_train, target_val, target_test, resamplings, compare_params,
              method: str) -> tuple[pd.DataFrame, BestGenomes]:
    trials, genomes, rs = [], [], []
    for r, bb, train, val, _ in _each_resampling(stage, backbone, target_train, target_val, target_test,
                                                 resamplings, compare_params):
        table, best = run(bb, train, val)
        trials.append(table.assign(resampling=r))
        genomes.append(best)
        rs.append(r)
    return pd.concat(trials, ignore_index=True), BestGenomes(method=method, resamplings=rs, genomes=genomes)


def search_biotune(
    backbone: BackboneCheckpoint,
    target_train: Split,
    target_val: Split,
    target_test: Split,
    compare_resamplings: SplitResamplings,
    search_study_store: StudyStore,
    compare_params: dict,
    search_params: dict,
    training_params: dict,
) -> tuple[pd.DataFrame, BestGenomes]:
    """BioTune's own search on each resampling (:func:`evotune.search.runner.run_biotune`); returns the
    trials (with a ``resampling`` column) and the best genomes. Resampling 0 is the default run's study."""
    check_compare_params(compare_params)

    def run(bb, train, val):
        trials, _, best = run_biotune(bb, train, val, search_study_store, search_params, training_params)
        return trials, best

    return _searches(f"compare.{BIOTUNE}", run, backbone, target_train, target_val, target_test,
                     compare_resamplings, compare_params, BIOTUNE)


def search_baseline(
    backbone: BackboneCheckpoint,
    target_train: Split,
    target_val: Split,
    target_test: Split,
    compare_resamplings: SplitResamplings,
    search_study_store: StudyStore,
    compare_params: dict,
    method_params: dict | None,
    search_params: dict,
    training_params: dict,
    *,
    method: str,
) -> tuple[pd.DataFrame, BestGenomes]:
    """A search baseline with BioTune's settings and evaluation budget on each resampling; returns the trials
    (with a ``resampling`` column) and the best genomes (:func:`evotune.search.runner.run_baseline`)."""
    check_compare_params(compare_params)
    m = get_method(method)
    if not isinstance(m, SearchMethod):
        raise ValueError(f"{method} is not a search method")
    params = m.resolve_params(method_params or {})

    def run(bb, train, val):
        return run_baseline(m, params, bb, train, val, search_study_store, search_params, training_params)

    return _searches(f"compare.{method}", run, backbone, target_train, target_val, target_test,
                     compare_resamplings, compare_params, method)


def confirm_biotune_genomes(
    backbone: dict,
    target_train: Split,
    target_val: Split,
    target_test: Split,
    compare_resamplings: SplitResamplings,
    search_trials: pd.DataFrame,
    best_genomes: BestGenomes,
    compare_params: dict,
    confirm_params: dict,
    search_params: dict,
    training_params: dict,
) -> pd.DataFrame:
    """The confirmation of BioTune's search on each resampling (``confirm.top_k`` genomes, every search chunk,
    ``confirm.seeds``), made once for every pick rule (``biotune_confirmed`` and ``biotune_parsimonious`` pick from
    the same trainings): the confirmation tables before the pick, with a ``resampling`` column."""
    check_compare_params(compare_params)
    # the trainings are the same for every rule that trains; "confirmed" only satisfies ConfirmConfig
    cfg = ConfirmConfig.from_params({**confirm_params, "rule": "confirmed"})
    stage = f"compare.{BIOTUNE}.confirm"
    rerun = f"kedro run --pipelines compare (its {BIOTUNE} search and confirmation together)"
    tables = []
    for r, bb, train, val, _ in _each_resampling(stage, backbone, target_train, target_val, target_test,
                                                 compare_resamplings, compare_params):
        best = _resampling_genome(stage, best_genomes, r, bb, train, rerun)
        trials = search_trials[search_trials["resampling"] == r]
        table = confirm_candidates(bb, train, val, trials, best, cfg, search_params, training_params,
                                   label=f"{stage} (resampling {r})")
        tables.append(table.assign(resampling=r))
    return pd.concat(tables, ignore_index=True)


def pick_confirmed_genomes(
    backbone: dict,
    target_train: Split,
    target_val: Split,
    target_test: Split,
    compare_resamplings: SplitResamplings,
    biotune_trials: pd.DataFrame,
    biotune_genomes: BestGenomes,
    biotune_confirmation: pd.DataFrame,
    compare_params: dict,
    method_params: dict | None,
    confirm_params: dict,
    search_params: dict,
    training_params: dict,
    *,
    method: str,
) -> tuple[BestGenomes, pd.DataFrame]:
    """BioTune's search on each resampling (``compare.biotune``'s trials, best genomes and confirmation) with
    another final pick (the method's ``confirm.rule``): the picked genome of each resampling (its record's
    ``confirm_trainings`` and ``confirm_seconds``, which the table counts in the rule's cost) and the confirmation
    tables with the pick (with a ``resampling`` column). Nothing is trained."""
    check_compare_params(compare_params)
    m = get_method(method)
    if not isinstance(m, PickMethod):
        raise ValueError(f"compare.{method}: not a pick-rule method (biotune_confirmed, biotune_parsimonious)")
    m.resolve_params(method_params or {})
    cfg = ConfirmConfig.from_params({**confirm_params, "rule": m.rule})
    stage = f"compare.{method}.pick"
    rerun = f"kedro run --pipelines compare (its {BIOTUNE} search, its confirmation and the {method} pick together)"
    genomes, tables, rs = [], [], []
    for r, bb, train, _, _ in _each_resampling(stage, backbone, target_train, target_val, target_test,
                                               compare_resamplings, compare_params):
        best = _resampling_genome(stage, biotune_genomes, r, bb, train, rerun)
        trials = biotune_trials[biotune_trials["resampling"] == r]
        confirmed = biotune_confirmation[biotune_confirmation["resampling"] == r].drop(columns="resampling")
        try:
            table, picked = pick_genome(confirmed, trials, best, bb, cfg, search_params, training_params)
        except ValueError as e:
            raise InputMismatchError(f"{stage}: compare.{BIOTUNE}.confirmation on resampling {r}: {e}; nothing "
                                     f"was picked. Make them again together: {rerun}.") from None
        genomes.append(dataclasses.replace(picked, method=method))
        tables.append(table.assign(resampling=r))
        rs.append(r)
    return (BestGenomes(method=method, resamplings=rs, genomes=genomes),
            pd.concat(tables, ignore_index=True))


def _resampling_genome(stage: str, genomes: BestGenomes, r: int, backbone: BackboneCheckpoint, train: Split,
                       rerun: str) -> GenomeRecord:
    """The search's best genome on resampling ``r``, checked to come from this resampling's data and backbone."""
    by_r = dict(zip(genomes.resamplings, genomes.genomes))
    if r not in by_r:
        raise InputMismatchError(f"{stage}: {genomes.method}'s best_genomes has no genome for resampling {r}; "
                                 f"nothing was run. Make them again together: {rerun}.")
    best = by_r[r]
    check_same_lineage(stage, "dataset", {"target_train": train, "best_genome": best}, rerun)
    check_same_lineage(stage, "backbone_id", {"backbone": backbone, "best_genome": best}, rerun)
    return best


def retrain_searched_genome(
    backbone: BackboneCheckpoint,
    target_train: Split,
    target_val: Split,
    target_test: Split,
    compare_resamplings: SplitResamplings,
    best_genomes: BestGenomes,
    compare_params: dict,
    training_params: dict,
    retrain_params: dict,
    *,
    method: str,
) -> list[TrainedMethod]:
    """On each resampling, the search's best genome there retrained exactly as BioTune's."""
    check_compare_params(compare_params)
    cfg = retrain_config(training_params, retrain_params)
    rerun = f"kedro run --pipelines compare (its {method} search and retrain together)"
    stage = f"compare.{method}.retrain"
    out = []
    for r, bb, train, val, _ in _each_resampling(stage, backbone, target_train, target_val, target_test,
                                                 compare_resamplings, compare_params):
        best = _resampling_genome(stage, best_genomes, r, bb, train, rerun)
        out.append(retrain_search_method(bb, train, val, best, method, _seeds(compare_params), cfg))
    return out


# --------------------------------------------------------------------------- test


def evaluate_method(backbone: BackboneCheckpoint, trained: list[TrainedMethod], target_train: Split, target_val: Split,
                    target_test: Split, compare_resamplings: SplitResamplings, training_params: dict
                    ) -> tuple[MethodMetrics, pd.DataFrame]:
    """Test every trained variant once on each resampling's test split (the reported variant there: the best
    by mean validation accuracy), then combine the resamplings; the per-seed table gets a ``resampling`` column."""
    cfg = TrainConfig.from_params(training_params)
    method = trained[0].method if trained else "?"
    rerun = f"kedro run --pipelines compare (its {method} training and test together)"
    stage = f"compare.{method}.test"
    if len(trained) != len(compare_resamplings):
        raise InputMismatchError(f"{stage}: {len(trained)} trained resampling(s) for {len(compare_resamplings)} "
                                 f"resampling(s); nothing was run. Make them again together: {rerun}.")
    tested = []
    for (r, bb, _, _, test), t in zip(_each_resampling(stage, backbone, target_train, target_val, target_test,
                                                       compare_resamplings), trained):
        check_same_lineage(stage, "dataset", {"backbone": bb, "trained": t, "target_test": test}, rerun)
        check_same_lineage(stage, "backbone_id", {"backbone": bb, "trained": t}, rerun)
        metrics, per_seed = evaluate_variants(bb, t, test, cfg)
        tested.append((r, test.dataset, metrics, per_seed))
    return combine_resamplings(tested, compare_resamplings.dataset)


# --------------------------------------------------------------------------- budgets


def _budgets(compare_params: dict) -> list[float]:
    return [float(b) for b in check_type(require(compare_params, "budgets", "compare"), list[float], "compare.budgets")]


def evaluate_budgets(
    backbone: dict,
    target_train: Split,
    target_val: Split,
    target_test: Split,
    compare_resamplings: SplitResamplings,
    search_trials: pd.DataFrame,
    best_genomes: BestGenomes,
    metrics: MethodMetrics,
    compare_params: dict,
    search_params: dict,
    training_params: dict,
    retrain_params: dict,
    *,
    method: str,
) -> pd.DataFrame:
    """On each resampling, the search's best-so-far genome at each of ``compare.budgets`` (fractions of BioTune's
    evaluations) retrained and tested exactly as its final genome (:mod:`evotune.report.budget`); where it is the
    final genome (100 % included) the method's own test (``metrics``) is reused, nothing retrained."""
    check_compare_params(compare_params)
    fractions = _budgets(compare_params)
    evo = SearchConfig.from_params(search_params)
    cfg = retrain_config(training_params, retrain_params)
    test_cfg = TrainConfig.from_params(training_params)
    seeds = _seeds(compare_params)
    stage = f"compare.{method}.budget"
    rerun = f"kedro run --pipelines compare (its {method} search, retrain, test and budget together)"
    by_r = dict(zip(best_genomes.resamplings, best_genomes.genomes))
    tested = {rm.resampling: rm for rm in metrics.resamplings}
    rows = []
    for r, bb, train, val, test in _each_resampling(stage, backbone, target_train, target_val, target_test,
                                                    compare_resamplings, compare_params):
        if r not in by_r or r not in tested or "resampling" not in search_trials.columns:
            raise InputMismatchError(f"{stage}: no search, genome or test for resampling {r}; nothing was run. "
                                     f"Make them again together: {rerun}.")
        final, full = by_r[r], tested[r]
        check_same_lineage(stage, "dataset", {"target_train": train, "best_genome": final}, rerun)
        trials = budgets.in_request_order(search_trials[search_trials["resampling"] == r])
        names = [c for c in trials.columns if c.startswith("gene_")]
        for b in fractions:
            n = budgets.budget_evaluations(len(trials), b)
            best = budgets.best_so_far(trials, n)
            if best is None:
                continue
            genes = [float(best[c]) for c in names]
            # all of the budget: the method's final genome, whatever tie the trials' order would break otherwise
            same = b >= 1.0 or (str(best["key"]) == final.key and np.allclose(genes, final.genes))
            if same:
                accs, mask, key = list(full.macro_accuracy), final.mask, final.key
            else:
                fresh = genome_record(genes, fitness=float(best["fitness"]), key=str(best["key"]), backbone=bb,
                                      block_names=list(final.block_names), base_lr=cfg.base_lr,
                                      force_head=final.force_head_trainable, study_name=final.study_name,
                                      storage=final.storage, evaluations=n, trainings=0, device=final.device,
                                      search_seconds=0.0, created=now())
                record = dataclasses.replace(final, **{f: getattr(fresh, f) for f in (
                    "genes", "threshold", "mask", "block_lrs", "lr_multipliers", "fitness", "key", "evaluations")})
                trained = retrain_search_method(bb, train, val, record, method, seeds, cfg)
                tested_b, per_seed = evaluate_variants(bb, trained, test, test_cfg)
                accs, mask, key = [float(a) for a in per_seed["macro_accuracy"]], record.mask, record.key
            searched = budgets.search_trainings(trials, n, len(evo.seeds))
            rows.append({"method": method, "resampling": r, "budget": float(b), "evaluations": n,
                         "search_trainings": searched, "trainings": searched + len(seeds), "key": key, "mask": mask,
                         "retrained": not same, "seeds": list(seeds), "macro_accuracy": accs,
                         "macro_accuracy_mean": float(np.mean(accs))})
            log.info("%s: %.0f %% of the budget (%d evaluations): genome %s (mask %s) tests at %.4f%s", stage,
                     100 * b, n, key, mask, float(np.mean(accs)), "" if not same else " (the final genome)")
    return pd.DataFrame(rows, columns=budgets.BUDGET_COLUMNS)


def budget_table(compare_params: dict, *budget_metrics_and_reference) -> pd.DataFrame:
    """Every search method's test macro accuracy at each budget, with its 95 % CI over the resamplings and the
    trainings spent; full fine-tuning's metrics, when compared (the last input), are the budget-1 reference."""
    check_compare_params(compare_params)
    frames = [x for x in budget_metrics_and_reference if isinstance(x, pd.DataFrame)]
    ref = next((x for x in budget_metrics_and_reference if isinstance(x, MethodMetrics)), None)
    reference = None
    if ref is not None:
        reference = {"method": ref.method, "trainings": len(_seeds(compare_params)),
                     "scores": {rm.resampling: rm.macro_accuracy_mean for rm in ref.resamplings}}
    rows = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=budgets.BUDGET_COLUMNS)
    return budgets.budget_table(rows, reference)


def budget_markdown(table: pd.DataFrame) -> str:
    """The budget table as markdown."""
    return budgets.budget_markdown(table)


def budget_figure(table: pd.DataFrame):
    """Test macro accuracy against trainings, one line per search method through its budgets."""
    return budgets.budget_figure(table)


# --------------------------------------------------------------------------- table and figure


def comparison_table(compare_params: dict, *method_metrics: MethodMetrics) -> pd.DataFrame:
    """One row per method (BioTune first, then ``compare.methods``), then one ``variant`` row per surgical
    block, with the confidence intervals and verdicts (:func:`evotune.report.comparison.comparison_table`).

    Every method's metrics must come from the same backbone and the same resamplings of the same split: the
    table may be put together from methods measured in separate runs (``kedro run --pipelines compare
    --params "compare.methods=[...]"`` one group at a time, then the table nodes), and a paired difference
    over other data would be meaningless."""
    check_compare_params(compare_params)
    stage, by_method = "compare.table", {f"compare.{m.method}.metrics": m for m in method_metrics}
    rerun = "kedro run --pipelines compare (the methods whose inputs differ, or all of them)"
    check_same_lineage(stage, "dataset", by_method, rerun)
    check_same_lineage(stage, "backbone_id", by_method, rerun)
    resamplings = {name: {"resamplings": ", ".join(f"r{r.resampling} {r.dataset}" for r in m.resamplings)}
                   for name, m in by_method.items()}
    check_same_lineage(stage, "resamplings", resamplings, rerun)
    return report.comparison_table(compare_params["methods"], method_metrics)


def comparison_markdown(table: pd.DataFrame) -> str:
    """The table as markdown, paper-style."""
    return report.comparison_markdown(table)


def comparison_figure(table: pd.DataFrame):
    """Test macro accuracy vs trainable-parameter share (log x), one point per method, error bars = 95 % CI."""
    return report.comparison_figure(table)
