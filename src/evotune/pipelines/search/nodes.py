"""Nodes of the search pipeline: thin adapters around :mod:`evotune.search.runner` and
:mod:`evotune.search.confirm`."""

from __future__ import annotations

import dataclasses
import logging

import pandas as pd

from ...lineage import check_same_lineage, now
from ...methods import GenomeShare, block_parameter_counts
from ...search.config import SearchConfig
from ...search.confirm import ConfirmConfig, confirm_genomes, confirmation_table, pick, top_genomes
from ...search.evaluator import train_unit
from ...search.records import GenomeRecord, genome_record
from ...search.runner import evaluation_setup, run_biotune, run_worker
from ...search.store import StudyStore
from ...training import TrainConfig

log = logging.getLogger(__name__)


def run_search(backbone: dict, target_train: dict, target_val: dict, search_study_store: StudyStore,
               search_params: dict, training_params: dict) -> tuple[pd.DataFrame, pd.DataFrame, GenomeRecord]:
    """BioTune's evolutionary search: the trials table, the population of every generation and
    the best genome (:func:`evotune.search.runner.run_biotune`)."""
    return run_biotune(backbone, target_train, target_val, search_study_store, search_params, training_params)


def run_search_worker(backbone: dict, target_train: dict, target_val: dict, search_study_store: StudyStore,
                      search_params: dict, training_params: dict) -> pd.DataFrame:
    """A worker process of a running search (``kedro run --pipelines search_worker``): trains
    queued units of the same study until the search ends (:func:`evotune.search.runner.run_worker`)."""
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
    scfg = SearchConfig.from_params(search_params)
    training = TrainConfig.from_params(training_params)
    if not cfg.trains:
        table = pd.DataFrame([{"key": best_genome.key, "search_rank": 0, "search_fitness": best_genome.fitness,
                               "mask": best_genome.mask, "trainings": 0, "seconds": 0.0, "val_accs": []}])
        table = confirmation_table(pick(table, cfg.rule))
        log.info("confirm.rule best: the search's best genome %s (mask %s), nothing trained", best_genome.key,
                 best_genome.mask)
        return table, dataclasses.replace(best_genome, pick_rule=cfg.rule, search_best_key=best_genome.key,
                                          confirm_trainings=0, confirm_seconds=0.0, created=now())
    trainer, _, _, chunks = evaluation_setup(backbone, target_train, target_val, scfg, training)
    counts, total = block_parameter_counts(trainer.model)
    share = GenomeShare(counts, total, scfg.force_head_trainable)
    candidates = top_genomes(search_trials, best_genome.key, cfg.top_k, list(best_genome.block_names))
    log.info("confirm.rule %s: %d genome(s) x %d chunk(s) x %d seed(s) = %d trainings", cfg.rule, len(candidates),
             len(chunks), len(cfg.seeds), len(candidates) * len(chunks) * len(cfg.seeds))
    table = pick(confirm_genomes(trainer, chunks, candidates, cfg, base_lr=training.base_lr,
                                 force_head=scfg.force_head_trainable, share=share, train_unit=train_unit), cfg.rule)
    row = table[table["picked"]].iloc[0]
    chosen = candidates[int(row["search_rank"])]
    fresh = genome_record(chosen["genes"], fitness=chosen["fitness"], key=chosen["key"], backbone=backbone,
                          block_names=list(best_genome.block_names), base_lr=training.base_lr,
                          force_head=scfg.force_head_trainable, study_name=best_genome.study_name,
                          storage=best_genome.storage, evaluations=best_genome.evaluations,
                          trainings=best_genome.trainings, device=best_genome.device,
                          search_seconds=best_genome.search_seconds, created=now())
    picked = dataclasses.replace(
        best_genome, **{f: getattr(fresh, f) for f in ("genes", "threshold", "mask", "block_lrs", "lr_multipliers",
                                                       "fitness", "key", "created")},
        pick_rule=cfg.rule, search_best_key=best_genome.key, confirm_trainings=int(table["trainings"].sum()),
        confirm_seconds=float(table["seconds"].sum()), confirmed_val_acc=float(row["confirmed_val_acc"]))
    log.info("confirm.rule %s picked %s (mask %s, confirmed val macro acc %.4f); the search's best was %s (mask %s)",
             cfg.rule, picked.key, picked.mask, picked.confirmed_val_acc, best_genome.key, best_genome.mask)
    return confirmation_table(table), picked
