"""DEFT (Vrbancic & Podgorelec, IEEE Access 2020) as DE/rand/1/bin over the block genome.

DEFT's own encoding is not public in code. Here, as SPEC section 6 asks:

* a DEFT individual is B block genes in [0, 1]; block i is trained iff its
  gene > 0.5 (a fixed threshold), every trained block at the base lr;
* DE/rand/1/bin: for target i, mutant v = x_r1 + F (x_r2 - x_r3) with r1, r2,
  r3 distinct and != i, clipped to [0, 1]; binomial crossover takes v_j where
  U(0,1) < CR, and always at one random position j_rand; the trial replaces
  the target when its fitness is not worse. Synchronous generations: all N
  trials are built from the current population, then evaluated together;
* population N = BioTune's N; initial genomes are redrawn until one block is
  selected (BioTune's validity rule); the budget is BioTune's
  (:class:`~evotune.methods.base.Budget`), so the last generation may be
  partial (its first targets only);
* the head follows BioTune's head policy (``search.force_head_trainable``).

To go through the same :class:`~evotune.search.evaluator.GenomeEvaluator` (and
``retrain_best_genome``) as BioTune, an individual is evaluated as the BioTune
genome :func:`deft_phenotype`: threshold gene 0.5, a trained block's gene the
smallest float above 0.5 (so g > t and lr = base_lr * 10^(2 * 1.1e-16), i.e.
the base lr to within float rounding) and a frozen block's gene exactly 0.5
(not selected; a forced head then trains at exactly base_lr).
"""

from __future__ import annotations

import numpy as np

from .base import Budget, SearchMethod

_ABOVE_HALF = float(np.nextafter(0.5, 1.0))


def deft_phenotype(block_genes) -> np.ndarray:
    """The B + 1 BioTune genes that decode to DEFT's plan for these B block genes."""
    x = np.asarray(block_genes, dtype=float)
    return np.append(np.where(x > 0.5, _ABOVE_HALF, 0.5), 0.5)


def de_mutation(rng: np.random.Generator, population: np.ndarray, i: int, F: float) -> np.ndarray:
    """DE/rand/1: x_r1 + F (x_r2 - x_r3), r1, r2, r3 distinct and != i; clipped to [0, 1]."""
    n = population.shape[0]
    if n < 4:
        raise ValueError(f"DE/rand/1 needs a population of at least 4 (search.population), got {n}")
    others = np.array([j for j in range(n) if j != i])
    r1, r2, r3 = rng.choice(others, size=3, replace=False)
    return np.clip(population[r1] + F * (population[r2] - population[r3]), 0.0, 1.0)


def de_crossover(rng: np.random.Generator, target: np.ndarray, mutant: np.ndarray, CR: float) -> np.ndarray:
    """Binomial crossover: mutant gene where U(0,1) < CR, and always at one random position."""
    d = target.shape[0]
    j_rand = int(rng.integers(d))
    take = rng.random(d) < CR
    take[j_rand] = True
    return np.where(take, mutant, target)


def _random_individual(rng: np.random.Generator, num_blocks: int) -> np.ndarray:
    while True:
        x = rng.random(num_blocks)
        if np.any(x > 0.5):
            return x


def run(budget: Budget, num_blocks: int, seed: int, F: float = 0.5, CR: float = 0.9) -> dict:
    problems = check({"F": F, "CR": CR}, budget.evo.population)
    if problems:
        raise ValueError("; ".join(problems))
    rng = np.random.default_rng(seed)
    n = budget.evo.population
    pop = np.stack([_random_individual(rng, num_blocks) for _ in range(n)])
    fit = np.array(budget.evaluate(
        [(f"deft/g0/{i}", deft_phenotype(x), "init") for i, x in enumerate(pop)],
        [{"genotype": [float(v) for v in x]} for x in pop],
    ))
    gen = 0
    while budget.remaining:
        gen += 1
        k = min(n, budget.remaining)
        trials = np.stack([de_crossover(rng, pop[i], de_mutation(rng, pop, i, float(F)), float(CR))
                           for i in range(k)])
        fit_t = budget.evaluate(
            [(f"deft/g{gen}/{i}", deft_phenotype(u), "trial") for i, u in enumerate(trials)],
            [{"genotype": [float(v) for v in u]} for u in trials],
        )
        for i, f in enumerate(fit_t):
            if f <= fit[i]:
                pop[i], fit[i] = trials[i], f
    return {"de_generations": gen, "genotype": budget.best.get("genotype")}


def check(params: dict, population: int) -> list[str]:
    """DEFT's ranges, and the population DE/rand/1 needs (three others besides each individual)."""
    problems = []
    if not 0.0 <= float(params["CR"]) <= 1.0:
        problems.append(f"compare.deft.CR must be in [0, 1], got {params['CR']}")
    if not 0.0 < float(params["F"]) <= 2.0:
        problems.append(f"compare.deft.F must be in (0, 2], got {params['F']}")
    if population < 4:
        problems.append(f"compare: deft (DE/rand/1) needs search.population >= 4, got {population}")
    return problems


METHOD = SearchMethod("deft", "DE/rand/1/bin over the block genome (gene > 0.5 trains the block at base lr)",
                      {"F": float, "CR": float, "seed": int | None}, run, check=check)
