"""The one runner of a search: BioTune's (:func:`run_biotune`), its worker processes' (:func:`run_worker`)
and the search baselines' (:func:`run_baseline`: DEFT, random search, TPE, NSGA-II with BioTune's settings
and evaluation budget). :func:`open_search` sets up what they share: the configuration, the trainer, the
search chunks and the study. The pipelines' nodes are thin adapters around these functions.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna
import pandas as pd
import torch

from ..backbones import model_from_checkpoint
from ..backbones.checkpoint import BackboneCheckpoint
from ..data.split import Split
from ..data.splitting import ChunkData, chunk_data, search_chunks
from ..errors import ParameterError
from ..lineage import check_same_lineage, now
from ..progress import SearchProgress, StageProgress, track
from ..training import TrainConfig, Trainer
from .config import STORAGE_KEY, SearchConfig
from .evaluator import GenomeEvaluator
from .evolution import Individual, biotune_search
from .queue import TrialQueue
from .records import GenomeRecord, genome_record, population_rows, trials_table
from .store import StudyStore, config_fingerprint, open_study, study_name_for

log = logging.getLogger(__name__)

#: the columns of ``search_worker_log``
WORKER_LOG_COLUMNS = ["key", "seed", "chunk", "val_acc", "epochs", "seconds", "diverged", "device"]

BIOTUNE_RERUN = "kedro run --from-nodes split_dataset (or the whole kedro run)"


def evaluation_setup(backbone: BackboneCheckpoint, train: Split, val: Split, cfg: SearchConfig, training: TrainConfig
                     ) -> tuple[Trainer, torch.Tensor, torch.Tensor, dict[int, ChunkData]]:
    """What evaluating a genome as the search does needs: the trainer, the search chunk of every train and
    val image, and each chunk's images on the trainer's device (also :mod:`evotune.fidelity` and
    :mod:`evotune.search.confirm`)."""
    trainer = Trainer(model_from_checkpoint(backbone), training, mean=backbone.mean, std=backbone.std)
    train_chunks, val_chunks = search_chunks(train, val, n_chunks=cfg.n_chunks, seed=cfg.chunk_seed)
    return trainer, train_chunks, val_chunks, chunk_data(trainer.device, train, val, train_chunks, val_chunks,
                                                         cfg.n_chunks)


@dataclass
class Search:
    """What a search, its workers and the search baselines share: settings, trainer, chunks, study."""

    cfg: SearchConfig
    training: TrainConfig
    trainer: Trainer
    chunks: dict[int, ChunkData]
    block_names: list[str]
    backbone: BackboneCheckpoint
    store: StudyStore
    study: optuna.Study
    queue: TrialQueue

    def evaluator(self, stage: StageProgress, total: int = 0, generations: int | None = None,
                  **extra_attrs: Any) -> GenomeEvaluator:
        return GenomeEvaluator(self.trainer, self.chunks, seeds=self.cfg.seeds, base_lr=self.training.base_lr,
                               force_head=self.cfg.force_head_trainable, queue=self.queue,
                               progress=SearchProgress(total, stage, generations), poll_s=self.cfg.worker_poll_s,
                               extra_attrs={"arch": self.backbone.arch, **extra_attrs})

    def record(self, genes: Any, fitness: float, key: str, *, evaluations: int, trainings: int, seconds: float,
               **extra: Any) -> GenomeRecord:
        return genome_record(genes, fitness=fitness, key=key, backbone=self.backbone, block_names=self.block_names,
                             base_lr=self.training.base_lr, force_head=self.cfg.force_head_trainable,
                             study_name=self.study.study_name, storage=self.store.url, evaluations=evaluations,
                             trainings=trainings, device=str(self.trainer.device), search_seconds=seconds,
                             created=now(), **extra)


def open_search(stage: str, backbone: BackboneCheckpoint, train: Split, val: Split, store: StudyStore,
                search_params: dict, training_params: dict, *, rerun: str = BIOTUNE_RERUN,
                study_prefix: str | None = None) -> Search:
    """Check the inputs, build the trainer, cut the search chunks and open the study."""
    cfg, training = SearchConfig.from_params(search_params), TrainConfig.from_params(training_params)
    if search_params.get(STORAGE_KEY, store.url) != store.url:  # set in a parameters file: it would be ignored
        raise ParameterError(
            f"search.storage is '{search_params[STORAGE_KEY]}' in the parameters, but the study storage is the "
            f"catalog entry search_study_store ('{store.url}'): give it on the command line "
            "(--params search.storage=...) or set `storage:` of search_study_store in conf/local/catalog.yml, "
            "not in a parameters file.")
    check_same_lineage(stage, "dataset", {"backbone": backbone, "target_train": train, "target_val": val}, rerun)
    trainer, train_chunks, val_chunks, chunks = evaluation_setup(backbone, train, val, cfg, training)
    name = study_name_for(cfg, training, backbone, train, val, train_chunks, val_chunks, study_name=study_prefix)
    study, storage = open_study(store.url, name, grace_period_s=cfg.stale_after_s)
    blocks = list(trainer.model.block_names)
    return Search(cfg, training, trainer, chunks, blocks, backbone, store, study,
                  TrialQueue(study, blocks, storage=storage, stale_after_s=cfg.stale_after_s))


def search_trainings(rows: list[dict[str, Any]]) -> int:
    """What a search's evaluations cost in trainings (one per seed that trained): those made by this run and
    those reused from the study alike, like its ``search_seconds`` (a reused study's search cost what it cost)."""
    by_key = {r["key"]: r for r in rows}  # an evaluation asked for twice was trained once
    return sum(len(r.get("val_accs") or []) for r in by_key.values())


def run_biotune(backbone: BackboneCheckpoint, train: Split, val: Split, store: StudyStore, search_params: dict,
                training_params: dict) -> tuple[pd.DataFrame, pd.DataFrame, GenomeRecord]:
    """Run BioTune's evolutionary search over which blocks to train and at what rate: the trials table (one
    row per evaluation, in request order), the population of every generation, and the best genome found."""
    s = open_search("evolutionary_search", backbone, train, val, store, search_params, training_params)
    cfg, study = s.cfg, s.study
    log.info("BioTune search on %s: %s (%d blocks), N=%d E=%d G=%d, %d seed(s), %d chunk(s), %d evaluations, "
             "study %s", s.trainer.device, backbone.arch, len(s.block_names), cfg.population, cfg.elite,
             cfg.generations, len(cfg.seeds), cfg.n_chunks, cfg.evaluations, study.study_name)
    study.set_user_attr("finished", False)
    pop_rows: list[dict] = []

    def on_generation(gen: int, pop: list[Individual]) -> None:
        pop_rows.extend(population_rows(gen, pop, s.block_names, s.training.base_lr, cfg.force_head_trainable))
        log.info("generation %d/%d: best fitness %.4f, mean %.4f", gen, cfg.generations,
                 pop[0].fitness, float(np.mean([p.fitness for p in pop])))

    with track("BioTune search", cfg.evaluations * len(cfg.seeds)) as stage:
        evaluator = s.evaluator(stage, cfg.evaluations, cfg.generations)
        result = biotune_search(len(s.block_names), cfg, evaluator, n_chunks=cfg.n_chunks,
                                on_generation=on_generation)
    study.set_user_attr("finished", True)  # tells worker processes to stop
    trials, best = trials_table(evaluator.rows, s.block_names), result.best
    record = s.record(best.genes, best.fitness, best.key, evaluations=len(trials),
                      trainings=search_trainings(evaluator.rows), seconds=float(trials["seconds"].sum()))
    log.info("Best genome %s (mask %s) fitness %.4f (%d evaluations reused from the study)", best.key, record.mask,
             best.fitness, int(trials["cached"].sum()))
    return trials, pd.DataFrame(pop_rows), record


def run_worker(backbone: BackboneCheckpoint, train: Split, val: Split, store: StudyStore, search_params: dict,
               training_params: dict) -> pd.DataFrame:
    """A worker process of a BioTune search, started with the same parameters and data (so it finds the same
    study): trains queued evaluations until the search ends (or it is idle ``search.worker_idle_timeout_s``);
    one row per training."""
    if not store.shared:
        raise ParameterError("The study storage is null (in memory): workers need a shared storage such as "
                             "'journal:///data/07_model_output/optuna.log' or a PostgreSQL URL "
                             "(--params search.storage=..., the catalog entry search_study_store).")
    s = open_search("evolutionary_search", backbone, train, val, store, search_params, training_params)
    me, done = s.queue.me, []
    log.info("search worker %s on %s for study %s", me, s.trainer.device, s.study.study_name)
    with track(f"search worker {me}", None) as stage:
        evaluator, idle_since = s.evaluator(stage), time.monotonic()
        while not s.study.user_attrs.get("finished", False):
            if (out := evaluator.run_one()) is not None:
                done += out
                idle_since = time.monotonic()
            elif time.monotonic() - idle_since > s.cfg.worker_idle_timeout_s:
                log.warning("worker %s: no work for %.0fs, stopping", me, s.cfg.worker_idle_timeout_s)
                break
            else:
                s.queue.requeue_stale()
                time.sleep(s.cfg.worker_poll_s)
    log.info("worker %s trained %d unit(s) (one training each)", me, len(done))
    return pd.DataFrame(done, columns=WORKER_LOG_COLUMNS)


def run_baseline(method: Any, params: dict[str, Any], backbone: BackboneCheckpoint, train: Split, val: Split,
                 store: StudyStore, search_params: dict, training_params: dict) -> tuple[pd.DataFrame, GenomeRecord]:
    """Run a search baseline (a :class:`~evotune.methods.SearchMethod` and its resolved ``params``) with
    BioTune's settings and evaluation budget, in its own study; returns (trials, best genome)."""
    t0, name = time.perf_counter(), method.name
    s = open_search(f"compare.{name}", backbone, train, val, store, search_params, training_params,
                    rerun="kedro run --from-nodes split_dataset (or the whole kedro run), then the compare pipeline",
                    study_prefix=f"{SearchConfig.from_params(search_params).study_name}-{name}-"
                                 f"{config_fingerprint(params)}")
    cfg = s.cfg
    log.info("%s search on %s: %d evaluations (BioTune's N=%d E=%d G=%d), %d seed(s), %d chunk(s), study %s",
             name, s.trainer.device, cfg.evaluations, cfg.population, cfg.elite, cfg.generations, len(cfg.seeds),
             cfg.n_chunks, s.study.study_name)
    with track(f"{name} search", cfg.evaluations * len(cfg.seeds)) as stage:
        evaluator = s.evaluator(stage, cfg.evaluations, method=name)
        outcome = method.search(evaluator, len(s.block_names), cfg, n_chunks=cfg.n_chunks, **params)
    # the evaluator's rows carry the training facts, the budget's rows the method's own (e.g. DEFT's genotype)
    by_key = {r["key"]: r for r in outcome.rows}
    trials = trials_table(sorted(({**by_key[e["key"]], **e} for e in evaluator.rows), key=lambda r: r["index"]),
                          s.block_names)
    record = s.record(outcome.best_genes, outcome.best_fitness, outcome.best_key, evaluations=outcome.evaluations,
                      trainings=search_trainings(evaluator.rows),
                      seconds=float(sum(float(r.get("seconds", 0.0)) for r in evaluator.rows)), method=name,
                      wall_seconds=time.perf_counter() - t0, params=dict(params), **outcome.extra)
    log.info("%s: best genome %s (mask %s) fitness %.4f after %d evaluations", name, outcome.best_key, record.mask,
             outcome.best_fitness, outcome.evaluations)
    return trials, record
