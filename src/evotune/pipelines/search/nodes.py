"""Node of the search pipeline: run BioTune and return its record as tables."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ...backbones import model_from_checkpoint
from ...errors import ParameterError
from ...evaluation_queue import UnitQueue
from ...evolution import EvolutionConfig, Individual, biotune_search
from ...genome import decode
from ...lineage import check_same_lineage, now
from ...params import from_params
from ...search import GenomeEvaluator, Progress, chunk_data, work
from ...study import TrialRecorder, config_fingerprint, open_study, tensor_fingerprint
from ...training import TrainConfig, Trainer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SearchParams:
    """The ``search`` parameters (conf/base/parameters_search.yml), every key required."""

    population: int
    elite: int
    generations: int
    seed: int
    seeds: tuple[int, ...]
    train_split_pct: float
    force_head_trainable: bool
    storage: str | None
    study_name: str
    exploit_delta: float
    stale_after_s: float  # a running training silent this long is taken over
    worker_idle_timeout_s: float  # a worker with nothing to do this long stops
    worker_poll_s: float  # how often an idle worker (or a waiting search) looks for work

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> SearchParams:
        out = from_params(cls, params, "search")
        if not out.seeds:
            raise ParameterError("search.seeds must list at least one seed, e.g. [684, 559, 629]")
        if not 0.0 < out.train_split_pct <= 1.0:
            raise ParameterError(f"search.train_split_pct must be in (0, 1], got {out.train_split_pct}")
        try:
            out.evolution()  # validates population / elite / generations
        except ValueError as exc:
            raise ParameterError(str(exc)) from None
        return out

    @property
    def n_chunks(self) -> int:
        return math.ceil(1.0 / float(self.train_split_pct) - 1e-9)

    def evolution(self) -> EvolutionConfig:
        return EvolutionConfig(
            population=int(self.population),
            elite=int(self.elite),
            generations=int(self.generations),
            seed=int(self.seed),
            exploit_delta=float(self.exploit_delta),
        )


def study_name_for(sp: SearchParams, cfg: TrainConfig, backbone: dict, train: dict, val: dict) -> str:
    """The study name carries a fingerprint of everything that decides the results.

    The same settings, backbone and data give the same study, so a rerun (or a
    run killed half-way) continues from the trials already recorded; anything
    else starts a fresh study beside it.
    """
    ignored = ("storage", "study_name", "stale_after_s", "worker_idle_timeout_s", "worker_poll_s")
    relevant = {k: v for k, v in sp.__dict__.items() if k not in ignored}
    training = {k: v for k, v in cfg.__dict__.items() if k not in ("device", "cpu_threads")}
    fp = config_fingerprint(
        relevant, training, tensor_fingerprint(backbone.state_dict),
        tensor_fingerprint(train.labels, train.chunks, train.images),
        tensor_fingerprint(val.labels, val.chunks, val.images),
    )
    return f"{sp.study_name}-{fp}"


def genome_record(genes, *, fitness: float, key: str, arch: str, block_names: list[str], cfg: TrainConfig,
                  sp: SearchParams, study_name: str, evaluations: int, trainings: int, device: str,
                  search_seconds: float, **extra: Any) -> dict:
    """The ``best_genome`` artifact of a search (BioTune's or a search baseline's)."""
    d = decode(genes, cfg.base_lr, force_head=sp.force_head_trainable)
    return {
        "arch": arch,
        "block_names": list(block_names),
        "genes": [float(x) for x in genes],
        "threshold": float(genes[-1]),
        "mask": d.mask,
        "block_lrs": list(d.block_lrs),
        "lr_multipliers": d.lr_multipliers(cfg.base_lr),
        "fitness": float(fitness),
        "key": key,
        "force_head_trainable": sp.force_head_trainable,
        "base_lr": cfg.base_lr,
        "study_name": study_name,
        "storage": sp.storage,
        "evaluations": int(evaluations),
        "trainings": int(trainings),
        "device": device,
        "search_seconds": float(search_seconds),
        **extra,
    }


def _population_rows(gen: int, pop: list[Individual], block_names: list[str], base_lr: float, force_head: bool) -> list[dict]:
    rows = []
    for rank, ind in enumerate(pop):
        d = decode(ind.genes, base_lr, force_head=force_head)
        row = {"generation": gen, "rank": rank, "key": ind.key, "fitness": ind.fitness,
               "extinction": ind.extinction, "mask": d.mask}
        row.update({f"gene_{b}": float(g) for b, g in zip(block_names, ind.genes[:-1])})
        row["gene_threshold"] = float(ind.genes[-1])
        rows.append(row)
    return rows


def _setup(backbone: dict, target_train: dict, target_val: dict, search_params: dict, training_params: dict):
    """What the search and its workers share: parameters, trainer, data chunks, study, unit queue."""
    sp = SearchParams.from_params(search_params)
    cfg = TrainConfig.from_params(training_params)
    check_same_lineage("evolutionary_search", "dataset",
                       {"backbone": backbone, "target_train": target_train, "target_val": target_val},
                       "kedro run --from-nodes split_dataset (or the whole kedro run)")
    n_chunks_data = int(target_train.chunks.max()) + 1
    if n_chunks_data != sp.n_chunks:
        raise ValueError(
            f"The training split has {n_chunks_data} search chunk(s) but search.train_split_pct="
            f"{sp.train_split_pct} asks for {sp.n_chunks}: rerun the data stage "
            "(kedro run --from-nodes split_dataset) after changing search.train_split_pct."
        )
    trainer = Trainer(model_from_checkpoint(backbone), cfg, mean=backbone.mean, std=backbone.std)
    chunks = chunk_data(trainer, target_train, target_val, sp.n_chunks)
    name = study_name_for(sp, cfg, backbone, target_train, target_val)
    study = open_study(sp.storage, name)
    num_genes = trainer.model.num_blocks + 1
    queue = UnitQueue(sp.storage, name, num_genes, stale_after_s=sp.stale_after_s)
    return sp, cfg, trainer, chunks, study, queue


def run_search_worker(
    backbone: dict, target_train: dict, target_val: dict, search_params: dict, training_params: dict
) -> pd.DataFrame:
    """A worker process of a search: trains queued units of the same study until the search ends.

    Start it with the same parameters and data as the search (``kedro run
    --pipelines search_worker``); it finds the study by the same fingerprint.
    """
    sp, cfg, trainer, chunks, study, queue = _setup(backbone, target_train, target_val, search_params, training_params)
    if not sp.storage:
        raise ValueError("search.storage is null (in memory): workers need a shared storage such as "
                         "'journal:///data/07_model_output/optuna.log' or a PostgreSQL URL.")
    log.info("search worker %s on %s for study %s", queue.me, trainer.device, study.study_name)

    def finished() -> bool:
        return bool(study.user_attrs.get("finished", False))

    done = work(queue, trainer, chunks, base_lr=cfg.base_lr, force_head=sp.force_head_trainable,
                finished=finished, idle_timeout_s=sp.worker_idle_timeout_s, poll_s=sp.worker_poll_s)
    log.info("worker %s trained %d unit(s)", queue.me, len(done))
    return pd.DataFrame(done, columns=["key", "seed", "chunk", "val_acc", "epochs", "seconds", "diverged", "device"])


def run_search(
    backbone: dict,
    target_train: dict,
    target_val: dict,
    search_params: dict,
    training_params: dict,
) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Run BioTune's evolutionary search over which blocks to train and at what rate.

    Returns the trials table (one row per evaluation, in request order), the
    population of every generation, and the best genome found.
    """
    sp, cfg, trainer, chunks, study, queue = _setup(backbone, target_train, target_val, search_params, training_params)
    evo = sp.evolution()
    block_names = list(trainer.model.block_names)
    log.info(
        "BioTune search on %s: %s (%d blocks), N=%d E=%d G=%d, %d seed(s), %d chunk(s), %d evaluations, study %s",
        trainer.device, backbone.arch, len(block_names), evo.population, evo.elite,
        evo.generations, len(sp.seeds), sp.n_chunks, evo.evaluations, study.study_name,
    )
    study.set_user_attr("finished", False)
    recorder = TrialRecorder(study, len(block_names) + 1)
    if recorder.completed:
        log.info("the study already holds %d finished evaluations: they are reused", recorder.completed)
    evaluator = GenomeEvaluator(
        trainer, chunks, seeds=sp.seeds, base_lr=cfg.base_lr, force_head=sp.force_head_trainable,
        recorder=recorder, queue=queue, progress=Progress(evo.evaluations), extra_attrs={"arch": backbone.arch},
        poll_s=sp.worker_poll_s,
    )
    pop_rows: list[dict] = []

    def on_generation(gen: int, pop: list[Individual]) -> None:
        pop_rows.extend(_population_rows(gen, pop, block_names, cfg.base_lr, sp.force_head_trainable))
        log.info("generation %d/%d: best fitness %.4f, mean %.4f", gen, evo.generations,
                 pop[0].fitness, float(np.mean([p.fitness for p in pop])))

    result = biotune_search(len(block_names), evo, evaluator, n_chunks=sp.n_chunks, on_generation=on_generation)
    study.set_user_attr("finished", True)  # tells worker processes to stop

    trials = pd.DataFrame(evaluator.rows)
    genes = np.array([r["genes"] for r in evaluator.rows])
    for i, b in enumerate(block_names):
        trials[f"gene_{b}"] = genes[:, i]
    trials["gene_threshold"] = genes[:, -1]
    trials = trials.drop(columns=["genes", "genome"], errors="ignore")
    for col in ("val_accs", "epochs"):
        trials[col] = trials[col].apply(lambda v: ";".join(f"{x:.6g}" for x in v))
    # per seed, the validation macro accuracy after each epoch: "0.8,0.9;0.7,0.85"
    # (absent from evaluations recorded by an older version of the project)
    trials["val_histories"] = trials.get("val_histories", pd.Series([None] * len(trials))).apply(
        lambda hs: ";".join(",".join(f"{x:.6g}" for x in h) for h in hs) if isinstance(hs, list) else "")

    best = result.best
    best_genome = genome_record(
        best.genes, fitness=best.fitness, key=best.key, arch=backbone.arch, block_names=block_names,
        cfg=cfg, sp=sp, study_name=study.study_name, evaluations=len(trials),
        trainings=int((trials["valid"] & ~trials["cached"]).sum() * len(sp.seeds)),
        device=str(trainer.device), search_seconds=float(trials["seconds"].sum()),
        dataset=backbone.dataset, backbone_id=backbone.backbone_id, created=now(),
    )
    log.info("Best genome %s (mask %s) fitness %.4f", best.key, best_genome["mask"], best.fitness)
    return trials, pd.DataFrame(pop_rows), best_genome
