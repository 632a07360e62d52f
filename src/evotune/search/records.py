"""What a search writes, BioTune's and the search baselines' alike:

* :func:`genome_record` -> ``best_genome`` / ``compare.<method>.best_genome`` (JSON, a typed artifact);
* :func:`trials_table` -> ``search_trials`` / ``compare.<method>.search_trials``: one row per evaluation,
  list columns as lists (``val_accs``, ``epochs``, ``val_histories``; DEFT's ``genotype``), one
  ``gene_<block>`` column per gene (Parquet);
* :func:`population_rows` -> ``search_population``: BioTune's population after every generation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ..artifacts import Artifact
from ..genome import decode, gene_names
from .evolution import Individual

if TYPE_CHECKING:
    from ..backbones.checkpoint import BackboneCheckpoint


@dataclass
class GenomeRecord(Artifact):
    """The best genome of a search, with how it was found and from which data and backbone."""

    arch: str
    block_names: list[str]
    genes: list[float]  # B + 1 genes in [0, 1], the threshold last
    threshold: float
    mask: str  # trained blocks, e.g. "001111" (after the head policy)
    block_lrs: list[float | None]  # per block; None = frozen
    lr_multipliers: list[float]  # per block, lr / base_lr (0 for frozen blocks)
    fitness: float  # 1 - mean over seeds of the best validation macro accuracy
    key: str  # the evaluation that found it, e.g. "g3/child/2"
    force_head_trainable: bool
    base_lr: float
    study_name: str
    storage: str | None
    evaluations: int
    trainings: int
    device: str
    search_seconds: float
    # lineage (evotune.lineage)
    dataset: str | None
    backbone_id: str | None
    created: str
    # search baselines (compare): the method, its parameters and wall time, and its own facts
    method: str | None = None
    params: dict[str, Any] | None = None
    wall_seconds: float | None = None
    seed: int | None = None  # the baseline's random seed
    genotype: list[float] | None = None  # DEFT: the best individual's genotype
    de_generations: int | None = None  # DEFT: differential-evolution generations run
    n_startup_trials: int | None = None  # TPE: random trials before the model
    population_size: int | None = None  # NSGA-II: its population
    front_size: int | None = None  # NSGA-II: genomes on its final Pareto front (val acc vs trainable share)
    # the confirmation stage (evotune.search.confirm; picked_genome): the rule that picked this genome, the
    # search's own best, and what the confirmation cost and measured
    pick_rule: str | None = None
    search_best_key: str | None = None
    confirm_trainings: int | None = None
    confirm_seconds: float | None = None
    confirmed_val_acc: float | None = None


#: what a search baseline's outcome may add to its record (``SearchOutcome.extra``)
BASELINE_EXTRAS = ("seed", "genotype", "de_generations", "n_startup_trials", "population_size", "front_size")


def genome_record(genes, *, fitness: float, key: str, backbone: BackboneCheckpoint, block_names: list[str], base_lr: float,
                  force_head: bool, study_name: str, storage: str | None, evaluations: int, trainings: int,
                  device: str, search_seconds: float, created: str, **extra: Any) -> GenomeRecord:
    """The :class:`GenomeRecord` of a search's best genome (BioTune's or a search baseline's);
    ``extra``: the optional fields (``method``, ``params``, ``wall_seconds``, :data:`BASELINE_EXTRAS`)."""
    d = decode(genes, base_lr, force_head=force_head)
    if extra.get("genotype") is not None:
        extra["genotype"] = [float(x) for x in extra["genotype"]]
    return GenomeRecord(
        arch=backbone.arch, block_names=list(block_names), genes=[float(x) for x in genes], threshold=float(genes[-1]),
        mask=d.mask, block_lrs=list(d.block_lrs), lr_multipliers=d.lr_multipliers(base_lr), fitness=float(fitness),
        key=key, force_head_trainable=force_head, base_lr=base_lr, study_name=study_name, storage=storage,
        evaluations=int(evaluations), trainings=int(trainings), device=device, search_seconds=float(search_seconds),
        dataset=backbone.dataset, backbone_id=backbone.backbone_id, created=created, **extra)


def trials_table(rows: list[dict[str, Any]], block_names: list[str]) -> pd.DataFrame:
    """One row per evaluation (in request order): the evaluator's facts, the genes as
    ``gene_<block>`` and ``gene_threshold`` columns, lists as lists."""
    trials = pd.DataFrame(rows)
    if trials.empty:
        return trials
    genes = np.array([r["genes"] for r in rows])
    for i, name in enumerate(gene_names(block_names)):
        trials[name] = genes[:, i]
    return trials.drop(columns=["genes", "genome"], errors="ignore")


def population_rows(generation: int, population: list[Individual], block_names: list[str], base_lr: float,
                    force_head: bool) -> list[dict[str, Any]]:
    """The rows of ``search_population`` for the population after ``generation``, best first
    (rank 0), with masks and genes."""
    return [{"generation": generation, "rank": rank, "key": ind.key, "fitness": ind.fitness,
             "extinction": ind.extinction, "mask": decode(ind.genes, base_lr, force_head=force_head).mask,
             **{name: float(g) for name, g in zip(gene_names(block_names), ind.genes)}}
            for rank, ind in enumerate(population)]
