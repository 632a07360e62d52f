"""The one runner of a search: BioTune's, its workers', and the search baselines'.

:func:`prepare` sets up what every search shares: its configuration, the trainer, the
search chunks of the train and val splits (cut here, :func:`search_chunks`), and the study
in the study store. Then

* :func:`run_biotune` runs BioTune's evolution (its evaluations queued in its study, so that
  workers can share them and a killed search resumes);
* :func:`run_worker` is a worker process of a running BioTune search;
* :func:`run_baseline` runs a search baseline (DEFT, random search, TPE) with BioTune's
  settings and evaluation budget, each evaluation recorded in its own study.

The pipelines' nodes (``pipelines/search``, ``pipelines/compare``) are thin adapters around
these functions.
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
from ..data.splitting import chunk_ids
from ..errors import ParameterError
from ..lineage import check_same_lineage, now
from ..progress import StageProgress, track
from ..training import TrainConfig, Trainer
from .config import STORAGE_KEY, SearchConfig
from .evaluator import ChunkData, GenomeEvaluator, Progress, chunk_data
from .evolution import Individual, biotune_search
from .queue import TrialQueue
from .records import GenomeRecord, genome_record, population_rows, trials_table
from .store import StudyStore, config_fingerprint, open_study, study_name_for

log = logging.getLogger(__name__)

#: the columns of ``search_worker_log``
WORKER_LOG_COLUMNS = ["key", "seed", "chunk", "val_acc", "epochs", "seconds", "diverged", "device"]


def search_chunks(train: Split, val: Split, *, n_chunks: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The search chunk of every train and val image (:func:`evotune.data.splitting.chunk_ids`,
    seeded by ``search.chunk_seed``, by default ``data.split.seed``)."""
    out = []
    for name, split in (("train", train), ("val", val)):
        ids = chunk_ids(split.items, split.labels.numpy(), split=name, n_chunks=n_chunks, seed=seed,
                        class_names=list(split.classes))
        out.append(torch.from_numpy(ids))
    return out[0], out[1]


def check_storage_parameter(search_params: dict, store: StudyStore) -> None:
    """``search.storage`` given with ``--params`` is what the catalog's ``search_study_store`` reads;
    set anywhere else (a parameters file) it would be ignored, so it is an error."""
    if isinstance(search_params, dict) and STORAGE_KEY in search_params and search_params[STORAGE_KEY] != store.url:
        raise ParameterError(
            f"search.storage is '{search_params[STORAGE_KEY]}' in the parameters, but the study storage is the "
            f"catalog entry search_study_store ('{store.url}'): give it on the command line "
            "(--params search.storage=...) or set `storage:` of search_study_store in conf/local/catalog.yml, "
            "not in a parameters file."
        )


@dataclass
class SearchSetup:
    """What a search, its workers and the search baselines share."""

    cfg: SearchConfig
    training: TrainConfig
    trainer: Trainer
    chunks: dict[int, ChunkData]
    block_names: list[str]
    store: StudyStore
    study: optuna.Study
    queue: TrialQueue

    @property
    def num_genes(self) -> int:
        return len(self.block_names) + 1


def evaluation_setup(backbone: BackboneCheckpoint, train: Split, val: Split, cfg: SearchConfig, training: TrainConfig
                     ) -> tuple[Trainer, torch.Tensor, torch.Tensor, dict[int, ChunkData]]:
    """What evaluating a genome as the search does needs: the trainer, the search chunk of every
    train and val image, and each chunk's images on the trainer's device (:func:`prepare`, and
    :mod:`evotune.fidelity`, which scores genomes the search never met)."""
    trainer = Trainer(model_from_checkpoint(backbone), training, mean=backbone.mean, std=backbone.std)
    train_chunks, val_chunks = search_chunks(train, val, n_chunks=cfg.n_chunks, seed=cfg.chunk_seed)
    return trainer, train_chunks, val_chunks, chunk_data(trainer, train, val, train_chunks, val_chunks, cfg.n_chunks)


def prepare(stage: str, backbone: BackboneCheckpoint, train: Split, val: Split, store: StudyStore, search_params: dict,
            training_params: dict, *, rerun: str, study_prefix: str | None = None) -> SearchSetup:
    """Check the inputs, build the trainer, cut the search chunks and open the study."""
    cfg = SearchConfig.from_params(search_params)
    check_storage_parameter(search_params, store)
    training = TrainConfig.from_params(training_params)
    check_same_lineage(stage, "dataset", {"backbone": backbone, "target_train": train, "target_val": val}, rerun)
    trainer, train_chunks, val_chunks, chunks = evaluation_setup(backbone, train, val, cfg, training)
    name = study_name_for(cfg, training, backbone, train, val, train_chunks, val_chunks, study_name=study_prefix)
    study, storage = open_study(store.url, name, grace_period_s=cfg.stale_after_s)
    blocks = list(trainer.model.block_names)
    queue = TrialQueue(study, blocks, storage=storage, stale_after_s=cfg.stale_after_s)
    return SearchSetup(cfg, training, trainer, chunks, blocks, store, study, queue)


def _evaluator(s: SearchSetup, stage: StageProgress, total: int | None, generations: int | None = None,
               **kw: Any) -> GenomeEvaluator:
    return GenomeEvaluator(s.trainer, s.chunks, seeds=s.cfg.seeds, base_lr=s.training.base_lr,
                           force_head=s.cfg.force_head_trainable, queue=s.queue,
                           progress=Progress(total or 0, stage, generations), poll_s=s.cfg.worker_poll_s, **kw)


BIOTUNE_RERUN = "kedro run --from-nodes split_dataset (or the whole kedro run)"


def run_biotune(backbone: BackboneCheckpoint, train: Split, val: Split, store: StudyStore, search_params: dict,
                training_params: dict) -> tuple[pd.DataFrame, pd.DataFrame, GenomeRecord]:
    """Run BioTune's evolutionary search over which blocks to train and at what rate.

    Returns the trials table (one row per evaluation, in request order), the population of
    every generation, and the best genome found.
    """
    s = prepare("evolutionary_search", backbone, train, val, store, search_params, training_params,
                rerun=BIOTUNE_RERUN)
    cfg, study = s.cfg, s.study
    log.info(
        "BioTune search on %s: %s (%d blocks), N=%d E=%d G=%d, %d seed(s), %d chunk(s), %d evaluations, study %s",
        s.trainer.device, backbone.arch, len(s.block_names), cfg.population, cfg.elite,
        cfg.generations, len(cfg.seeds), cfg.n_chunks, cfg.evaluations, study.study_name,
    )
    study.set_user_attr("finished", False)
    pop_rows: list[dict] = []

    def on_generation(gen: int, pop: list[Individual]) -> None:
        pop_rows.extend(population_rows(gen, pop, s.block_names, s.training.base_lr, cfg.force_head_trainable))
        log.info("generation %d/%d: best fitness %.4f, mean %.4f", gen, cfg.generations,
                 pop[0].fitness, float(np.mean([p.fitness for p in pop])))

    with track("BioTune search", cfg.evaluations * len(cfg.seeds)) as stage:
        evaluator = _evaluator(s, stage, cfg.evaluations, cfg.generations, extra_attrs={"arch": backbone.arch})
        done = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
        if done:
            log.info("the study already holds %d finished evaluations: they are reused", done)
        result = biotune_search(len(s.block_names), cfg, evaluator, n_chunks=cfg.n_chunks,
                                on_generation=on_generation)
    study.set_user_attr("finished", True)  # tells worker processes to stop

    trials = trials_table(evaluator.rows, s.block_names)
    best = result.best
    record = genome_record(
        best.genes, fitness=best.fitness, key=best.key, backbone=backbone, block_names=s.block_names,
        base_lr=s.training.base_lr, force_head=cfg.force_head_trainable, study_name=study.study_name,
        storage=store.url, evaluations=len(trials),
        trainings=int((trials["valid"] & ~trials["cached"]).sum() * len(cfg.seeds)),
        device=str(s.trainer.device), search_seconds=float(trials["seconds"].sum()), created=now(),
    )
    log.info("Best genome %s (mask %s) fitness %.4f", best.key, record.mask, best.fitness)
    return trials, pd.DataFrame(pop_rows), record


def run_worker(backbone: BackboneCheckpoint, train: Split, val: Split, store: StudyStore, search_params: dict,
               training_params: dict) -> pd.DataFrame:
    """A worker process of a BioTune search: trains queued evaluations of the same study until the search
    ends (or it is idle ``search.worker_idle_timeout_s``); one row per training.

    Started with the same parameters and data as the search, it finds the study by the same fingerprint.
    """
    if not store.shared:
        raise ParameterError("The study storage is null (in memory): workers need a shared storage such as "
                             "'journal:///data/07_model_output/optuna.log' or a PostgreSQL URL "
                             "(--params search.storage=..., the catalog entry search_study_store).")
    s = prepare("evolutionary_search", backbone, train, val, store, search_params, training_params,
                rerun=BIOTUNE_RERUN)
    me = s.queue.me
    log.info("search worker %s on %s for study %s", me, s.trainer.device, s.study.study_name)
    done: list[dict[str, Any]] = []
    with track(f"search worker {me}", None) as stage:
        evaluator = _evaluator(s, stage, None)
        idle_since = time.monotonic()
        while True:
            out = evaluator.run_one()
            if out is not None:
                done += out
                idle_since = time.monotonic()
                continue
            if s.study.user_attrs.get("finished", False):
                break
            if time.monotonic() - idle_since > s.cfg.worker_idle_timeout_s:
                log.warning("worker %s: no work for %.0fs, stopping", me, s.cfg.worker_idle_timeout_s)
                break
            s.queue.requeue_stale()
            time.sleep(s.cfg.worker_poll_s)
    log.info("worker %s trained %d unit(s) (one training each)", me, len(done))
    return pd.DataFrame(done, columns=WORKER_LOG_COLUMNS)


def run_baseline(method: Any, params: dict[str, Any], backbone: BackboneCheckpoint, train: Split, val: Split,
                 store: StudyStore, search_params: dict, training_params: dict) -> tuple[pd.DataFrame, GenomeRecord]:
    """Run a search baseline (a :class:`~evotune.methods.SearchMethod` and its resolved
    ``params``) with BioTune's settings and evaluation budget; returns (trials, best genome)."""
    t0 = time.perf_counter()
    name = method.name
    base = SearchConfig.from_params(search_params)
    s = prepare(f"compare.{name}", backbone, train, val, store, search_params, training_params,
                rerun="kedro run --from-nodes split_dataset (or the whole kedro run), then the compare pipeline",
                study_prefix=f"{base.study_name}-{name}-{config_fingerprint(params)}")
    cfg = s.cfg
    log.info("%s search on %s: %d evaluations (BioTune's N=%d E=%d G=%d), %d seed(s), %d chunk(s), study %s",
             name, s.trainer.device, cfg.evaluations, cfg.population, cfg.elite, cfg.generations, len(cfg.seeds),
             cfg.n_chunks, s.study.study_name)
    with track(f"{name} search", cfg.evaluations * len(cfg.seeds)) as stage:
        evaluator = _evaluator(s, stage, cfg.evaluations, extra_attrs={"arch": backbone.arch, "method": name})
        outcome = method.search(evaluator, len(s.block_names), cfg, n_chunks=cfg.n_chunks, **params)
    # the evaluator's rows carry the training facts, the budget's rows the method's own (e.g. DEFT's genotype)
    by_key = {r["key"]: r for r in outcome.rows}
    rows = [{**by_key[erow["key"]], **erow} for erow in evaluator.rows]
    rows.sort(key=lambda r: r["index"])
    trials = trials_table(rows, s.block_names)
    trained = int(sum(len(r.get("val_accs", [])) for r in evaluator.rows))
    record = genome_record(
        outcome.best_genes, fitness=outcome.best_fitness, key=outcome.best_key, backbone=backbone,
        block_names=s.block_names, base_lr=s.training.base_lr, force_head=cfg.force_head_trainable,
        study_name=s.study.study_name, storage=store.url, evaluations=outcome.evaluations, trainings=trained,
        device=str(s.trainer.device), search_seconds=float(sum(float(r.get("seconds", 0.0)) for r in evaluator.rows)),
        created=now(), method=name, wall_seconds=time.perf_counter() - t0, params=dict(params), **outcome.extra,
    )
    log.info("%s: best genome %s (mask %s) fitness %.4f after %d evaluations", name, outcome.best_key, record.mask,
             outcome.best_fitness, outcome.evaluations)
    return trials, record
