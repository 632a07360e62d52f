"""Search fidelity: does the search's fitness of a genome predict its test accuracy after retraining?

The search ranks genomes by a cheap, noisy score: the best validation macro accuracy on one
search chunk, after a short training, averaged over ``search.seeds`` (fitness = 1 - that score).
The measurement here checks that this signal is above its noise. Its genomes are

* the search's final population (the last generation of ``search_population``), with the
  fitness the search gave them (an elite kept from an earlier generation was scored on that
  generation's chunk: its ``chunk`` says which);
* ``fidelity.random_genomes`` genomes drawn with :func:`evotune.genome.random_genome`, scored
  exactly as the search scores a genome (its :class:`~evotune.search.evaluator.GenomeEvaluator`
  on the chunk of the last generation, with ``search.seeds``), so that the scores span more
  than the survivors of the search.

Each genome (identical genes counted once) is retrained on the whole training pool once per
seed of ``fidelity.seeds``, as the best genome is (:func:`evotune.retraining.retrain_genome`),
and tested (:func:`evotune.evaluation.evaluate_variant`). The result is Spearman's rank
correlation between the search's score (1 - fitness) and the test macro accuracy (mean over
seeds), with a seeded percentile-bootstrap interval over genomes: near 0, the search's choices
are noise; near 1, its ranking holds on the test split.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd

from .artifacts import Artifact
from .errors import ParameterError
from .evaluation import evaluate_variant
from .genome import decode, genome_key, random_genome
from .lineage import now
from .params import from_params, where
from .progress import SearchProgress, track
from .retraining import retrain_genome
from .search.config import SearchConfig
from .search.evaluator import GenomeEvaluator
from .search.evolution import EvalRequest
from .search.records import GenomeRecord, genome_record
from .search.runner import evaluation_setup
from .training import TrainConfig

log = logging.getLogger(__name__)

#: the confidence of the bootstrap interval
CONFIDENCE = 0.95

#: mixed into ``fidelity.seed`` for the random genomes: a stream the search's own draws
#: (``numpy.random.default_rng(search.seed)``) never give, whatever the two seeds
RANDOM_GENOME_STREAM = 11

ORIGINS = ("final_population", "random")

#: the columns of ``search_fidelity``, one row per genome
COLUMNS = [
    "key", "origin", "is_best", "generation", "chunk", "mask", "genes", "valid", "fitness", "val_score", "val_accs",
    "test_seeds", "test_macro_accs", "test_macro_acc_mean", "retrain_seconds", "included",
]


@dataclass(frozen=True)
class FidelityConfig:
    """The ``fidelity`` parameters (conf/base/parameters_fidelity.yml)."""

    enabled: bool  # false: no training, the report says the measurement was switched off
    random_genomes: int  # random genomes besides the final population
    seed: int  # seeds the random genomes and the bootstrap
    seeds: tuple[int, ...]  # each genome retrained once per seed
    bootstrap: int  # bootstrap resamples of the genomes

    def __post_init__(self) -> None:
        if self.random_genomes < 0:
            raise ParameterError(f"fidelity.random_genomes must be >= 0 (0: the final population alone), "
                                 f"got {self.random_genomes} ({where('fidelity')}).")
        if not self.seeds:
            raise ParameterError(f"fidelity.seeds must list at least one seed, e.g. ${{retrain.seeds}} "
                                 f"({where('fidelity')}).")
        if self.bootstrap < 100:
            raise ParameterError(f"fidelity.bootstrap must be >= 100 resamples (e.g. 2000) for a "
                                 f"{100 * CONFIDENCE:.0f} % interval, got {self.bootstrap} ({where('fidelity')}).")

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> FidelityConfig:
        return from_params(cls, params, "fidelity")


@dataclass
class FidelitySummary(Artifact):
    """The measurement in numbers (``search_fidelity_summary``); None where it was not made."""

    enabled: bool
    rho: float | None  # Spearman's rank correlation, search score vs test macro accuracy
    ci_low: float | None  # the percentile-bootstrap interval of rho
    ci_high: float | None
    confidence: float
    n: int  # genomes in the correlation
    n_final_population: int  # distinct genomes of the final population
    n_random: int
    n_excluded: int  # genomes left out: invalid (nothing trained) or every retraining diverged
    generation: int | None  # the search's last generation
    chunk: int | None  # the chunk the random genomes were scored on (the last generation's)
    seeds: list[int]  # retrain seeds
    search_seeds: list[int]
    bootstrap: int
    trainings: int  # extra trainings: the random genomes' search scores and every retraining
    seconds: float  # wall time of the measurement
    dataset: str | None
    backbone_id: str | None
    created: str


# --------------------------------------------------------------------------- statistics


def _rank_correlations(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman's rho of each row pair of ``x`` and ``y`` (2-D, rows = samples; ties: average
    ranks); NaN where a row is constant."""
    rx = pd.DataFrame(x).rank(axis=1, method="average").to_numpy(dtype=float, copy=True)
    ry = pd.DataFrame(y).rank(axis=1, method="average").to_numpy(dtype=float, copy=True)
    rx = rx - rx.mean(axis=1, keepdims=True)
    ry = ry - ry.mean(axis=1, keepdims=True)
    den = np.sqrt((rx * rx).sum(axis=1) * (ry * ry).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.where(den > 0, (rx * ry).sum(axis=1) / np.where(den > 0, den, 1.0), np.nan)
    return np.clip(r, -1.0, 1.0)


def spearman(x, y) -> float:
    """Spearman's rank correlation of two equally long sequences (NaN if one is constant or n < 2)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"x and y must be 1-D and equally long, got {x.shape} and {y.shape}")
    return float(_rank_correlations(x[None], y[None])[0]) if len(x) >= 2 else math.nan


@dataclass(frozen=True)
class RankCorrelation:
    rho: float
    ci_low: float
    ci_high: float
    n: int


def rank_correlation(x, y, *, n_boot: int, seed: int, confidence: float = CONFIDENCE) -> RankCorrelation:
    """Spearman's rho of ``x`` and ``y`` and its percentile-bootstrap interval: ``n_boot`` resamples
    of the pairs with replacement from ``numpy.random.default_rng(seed)``; resamples whose ranks are
    constant (no correlation defined) are left out. Fewer than 3 pairs: all NaN."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    n = len(x)
    if n < 3:
        return RankCorrelation(math.nan, math.nan, math.nan, n)
    rho = spearman(x, y)
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    boot = _rank_correlations(x[idx], y[idx])
    boot = boot[np.isfinite(boot)]
    if not len(boot):
        return RankCorrelation(rho, math.nan, math.nan, n)
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(boot, [alpha, 1.0 - alpha])
    return RankCorrelation(rho, float(lo), float(hi), n)


# --------------------------------------------------------------------------- the genomes


def final_population(search_population: pd.DataFrame, search_trials: pd.DataFrame, block_names: list[str]
                     ) -> pd.DataFrame:
    """The last generation of ``search_population``, best first, with each genome's genes, chunk and
    per-seed validation accuracies (from ``search_trials``)."""
    last = int(search_population["generation"].max())
    pop = search_population[search_population["generation"].astype(int) == last].sort_values("rank", kind="stable")
    gene_cols = [f"gene_{b}" for b in block_names] + ["gene_threshold"]
    missing = [c for c in gene_cols if c not in pop.columns]
    if missing:
        raise ValueError(f"search_population has no columns {missing}: it was made for other blocks than "
                         f"{block_names}; rerun the search (kedro run --from-nodes evolutionary_search).")
    trials = search_trials.drop_duplicates("key", keep="last").set_index("key") if len(search_trials) else None
    rows = []
    for _, r in pop.iterrows():
        t = trials.loc[r["key"]] if trials is not None and r["key"] in trials.index else None
        rows.append({
            "key": str(r["key"]), "origin": "final_population", "generation": last,
            "chunk": int(t["chunk"]) if t is not None and "chunk" in t else None,
            "genes": [float(r[c]) for c in gene_cols], "fitness": float(r["fitness"]),
            "val_accs": [float(a) for a in t["val_accs"]] if t is not None and "val_accs" in t else [],
        })
    return pd.DataFrame(rows)


def draw_random_genomes(n: int, num_blocks: int, seed: int) -> list[np.ndarray]:
    """``n`` genomes of :func:`evotune.genome.random_genome` (valid by construction), from a stream
    seeded by ``seed`` that the search's own draws never use (:data:`RANDOM_GENOME_STREAM`)."""
    rng = np.random.default_rng([seed, RANDOM_GENOME_STREAM])
    return [random_genome(rng, num_blocks) for _ in range(n)]


def score_like_the_search(genomes: list[np.ndarray], backbone: Any, train: Any, val: Any, search: SearchConfig,
                          training: TrainConfig, generation: int) -> list[dict[str, Any]]:
    """Each genome scored as the search scores one in ``generation`` (its chunk, ``search.seeds``):
    one row each, as the search's evaluator writes it (key, chunk, fitness, val_accs, seconds...)."""
    if not genomes:
        return []
    trainer, _, _, chunks = evaluation_setup(backbone, train, val, search, training)
    chunk = generation % max(search.n_chunks, 1)
    with track("search fidelity: random genomes scored as the search does", len(genomes) * len(search.seeds)) as stage:
        evaluator = GenomeEvaluator(trainer, chunks, seeds=search.seeds, base_lr=training.base_lr,
                                    force_head=search.force_head_trainable,
                                    progress=SearchProgress(len(genomes), stage, name="fidelity"))
        evaluator([EvalRequest(f"fidelity/random/{i}", g, generation, "random", chunk)
                   for i, g in enumerate(genomes)])
    return evaluator.rows


def retrain_and_test(record: GenomeRecord, backbone: Any, train: Any, val: Any, test: Any, seeds: list[int],
                          retrain: TrainConfig, test_cfg: TrainConfig) -> tuple[list[float], float, int]:
    """The genome retrained once per seed (as the best genome is) and tested: the test macro accuracy
    per seed (NaN where the training diverged), the training seconds and the number of trainings."""
    variant = retrain_genome(backbone, train, val, record, seeds, retrain, method="search_fidelity")
    seconds = float(sum(r.seconds for r in variant.runs))
    ok = [r for r in variant.runs if r.state_dict is not None]
    accs = {}
    if ok:
        _, per_seed = evaluate_variant(backbone, replace(variant, runs=ok), test, test_cfg, trained_as="search_fidelity")
        accs = dict(zip(per_seed["seed"].astype(int), per_seed["macro_accuracy"].astype(float)))
    return [float(accs.get(int(s), math.nan)) for s in seeds], seconds, len(variant.runs)


# --------------------------------------------------------------------------- the measurement


def switched_off(cfg: FidelityConfig, search: SearchConfig) -> tuple[pd.DataFrame, FidelitySummary]:
    """What the measurement writes when ``fidelity.enabled`` is false: no genome, no training."""
    return pd.DataFrame(columns=COLUMNS), FidelitySummary(
        enabled=False, rho=None, ci_low=None, ci_high=None, confidence=CONFIDENCE, n=0, n_final_population=0,
        n_random=0, n_excluded=0, generation=None, chunk=None, seeds=list(cfg.seeds), search_seeds=list(search.seeds),
        bootstrap=cfg.bootstrap, trainings=0, seconds=0.0, dataset=None, backbone_id=None, created=now())


def _none_if_nan(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def _retrain_row(g: dict[str, Any], stage: Any, backbone: Any, train: Any, val: Any, test: Any,
                 best_genome: GenomeRecord, block_names: list[str], best_key: str, seeds: list[int],
                 search: SearchConfig, retrain: TrainConfig, test_cfg: TrainConfig) -> dict[str, Any]:
    """One genome of the measurement retrained and tested (``_trained``: its trainings)."""
    decoded = decode(g["genes"], retrain.base_lr, force_head=search.force_head_trainable)
    accs, seconds, n_trained = [math.nan] * len(seeds), 0.0, 0
    stage.start(f"{g['key']} ({decoded.mask})")
    if decoded.valid:
        record = genome_record(
            g["genes"], fitness=g["fitness"], key=g["key"], backbone=backbone, block_names=block_names,
            base_lr=retrain.base_lr, force_head=search.force_head_trainable, study_name=best_genome.study_name,
            storage=best_genome.storage, evaluations=1, trainings=len(g["val_accs"]), device=best_genome.device,
            search_seconds=0.0, created=now())
        accs, seconds, n_trained = retrain_and_test(record, backbone, train, val, test, seeds, retrain, test_cfg)
    finite = [a for a in accs if math.isfinite(a)]
    mean = float(np.mean(finite)) if finite else math.nan
    stage.advance(1, timed=decoded.valid, note=f"{g['key']}: test {mean:.3f}" if finite else g["key"])
    return {**g, "is_best": genome_key(g["genes"]) == best_key, "mask": decoded.mask,
            "valid": decoded.valid, "val_score": 1.0 - float(g["fitness"]), "test_seeds": seeds,
            "test_macro_accs": accs, "test_macro_acc_mean": mean, "retrain_seconds": seconds,
            "included": bool(decoded.valid and finite), "_trained": n_trained}


def measure_fidelity(
    backbone: Any, train: Any, val: Any, test: Any, search_population: pd.DataFrame, search_trials: pd.DataFrame,
    best_genome: GenomeRecord, cfg: FidelityConfig, search: SearchConfig, search_training: TrainConfig,
    retrain: TrainConfig, test_cfg: TrainConfig,
) -> tuple[pd.DataFrame, FidelitySummary]:
    """The table (one row per distinct genome) and the summary of the measurement (see the module)."""
    if not cfg.enabled:
        return switched_off(cfg, search)
    t0 = time.perf_counter()
    block_names = list(best_genome.block_names)
    final = final_population(search_population, search_trials, block_names)
    generation = int(final["generation"].iloc[0])
    scored = score_like_the_search(draw_random_genomes(cfg.random_genomes, len(block_names), cfg.seed), backbone,
                                   train, val, search, search_training, generation)
    trainings = int(sum(len(r["val_accs"]) for r in scored))
    random_rows = pd.DataFrame([{"key": r["key"], "origin": "random", "generation": generation, "chunk": r["chunk"],
                                 "genes": list(r["genes"]), "fitness": float(r["fitness"]),
                                 "val_accs": list(r["val_accs"])} for r in scored])
    genomes = pd.concat([final, random_rows], ignore_index=True) if len(random_rows) else final
    genomes = genomes[~genomes["genes"].map(genome_key).duplicated()].reset_index(drop=True)
    best_key = genome_key(best_genome.genes)
    seeds = list(cfg.seeds)
    rows = []
    with track("search fidelity: retrain and test", len(genomes), unit="genomes") as stage:
        for g in genomes.to_dict("records"):
            rows.append(_retrain_row(g, stage, backbone, train, val, test, best_genome, block_names, best_key, seeds,
                                     search, retrain, test_cfg))
    trainings += int(sum(r.pop("_trained") for r in rows))
    table = pd.DataFrame(rows)[COLUMNS]
    table["chunk"] = pd.to_numeric(table["chunk"]).astype("Int64")
    inc = table[table["included"]]
    corr = rank_correlation(inc["val_score"], inc["test_macro_acc_mean"], n_boot=cfg.bootstrap, seed=cfg.seed)
    summary = FidelitySummary(
        enabled=True, rho=_none_if_nan(corr.rho), ci_low=_none_if_nan(corr.ci_low), ci_high=_none_if_nan(corr.ci_high),
        confidence=CONFIDENCE, n=corr.n, n_final_population=int((table["origin"] == "final_population").sum()),
        n_random=int((table["origin"] == "random").sum()), n_excluded=int((~table["included"]).sum()),
        generation=generation, chunk=generation % max(search.n_chunks, 1), seeds=seeds, search_seeds=list(search.seeds),
        bootstrap=cfg.bootstrap, trainings=trainings, seconds=time.perf_counter() - t0, dataset=backbone.dataset,
        backbone_id=backbone.backbone_id, created=now())
    log.info("search fidelity: Spearman rho %s [%s, %s] over %d genomes (%d extra trainings, %.1fs)",
             _fmt(summary.rho), _fmt(summary.ci_low), _fmt(summary.ci_high), summary.n, trainings, summary.seconds)
    return table, summary


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"
