"""BioTune's evolutionary operators and search loop (SPEC section 4).

The loop is independent of training: it asks an ``evaluate`` callable for the
fitness of batches of :class:`EvalRequest` (lower is better) and never looks at
data or models. Requests in one batch are independent (initial population,
elite exploitation) and may be evaluated in parallel; offspring are evaluated
one at a time because each child's fitness changes the mating pool.

Every draw comes from one ``numpy.random.Generator`` seeded by the config, so
the sequence of requests is a pure function of the seed and the fitness values
returned: replaying recorded fitness values replays the search (resume).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ..genome import random_genome
from .config import SearchConfig

log = logging.getLogger(__name__)


@dataclass
class EvalRequest:
    key: str  # unique and stable within a search, e.g. "g3/child/2"
    genes: np.ndarray
    generation: int
    role: str  # init | elite_plus | elite_minus | child | random_child
    chunk: int


@dataclass
class Individual:
    genes: np.ndarray
    fitness: float
    extinction: float = 0.0
    key: str = ""


Evaluate = Callable[[list[EvalRequest]], list[float]]


# --------------------------------------------------------------------------- operators


def rank_linear_probs(m: int) -> np.ndarray:
    """Selection probabilities for a pool of m sorted best-first: weight m - i."""
    w = np.arange(m, 0, -1, dtype=float)
    return w / w.sum()


def draw_parents(rng: np.random.Generator, pool_size: int) -> tuple[int, int, int]:
    """Two distinct parents and a prototype distinct from both (needs pool_size >= 3)."""
    idx = rng.choice(pool_size, size=3, replace=False, p=rank_linear_probs(pool_size))
    return int(idx[0]), int(idx[1]), int(idx[2])


def crossover(rng: np.random.Generator, p1: np.ndarray, p2: np.ndarray) -> np.ndarray:
    """Per-gene blend: w * p1 + (1 - w) * p2, w ~ U(0, 1) per gene."""
    w = rng.random(p1.shape[0])
    return w * p1 + (1.0 - w) * p2


def mutate(rng: np.random.Generator, child: np.ndarray, pbar: float) -> np.ndarray:
    """Each gene mutates with prob (1/n)(pbar(n-1)+1) by pbar * U(-1, 1); clipped."""
    n = child.shape[0]
    prob = (pbar * (n - 1) + 1.0) / n
    hit = rng.random(n) < prob
    delta = pbar * rng.uniform(-1.0, 1.0, size=n)
    return np.clip(np.where(hit, child + delta, child), 0.0, 1.0)


def adopt(rng: np.random.Generator, child: np.ndarray, p1: np.ndarray, p2: np.ndarray, proto: np.ndarray) -> np.ndarray:
    """child += lerp(u1 (mean(p1,p2) - child), u2 (proto - child), u3); clipped."""
    u1, u2, u3 = rng.random(3)
    a = u1 * ((p1 + p2) / 2.0 - child)
    b = u2 * (proto - child)
    return np.clip(child + a + u3 * (b - a), 0.0, 1.0)


def extinction_probabilities(fitness: Sequence[float]) -> np.ndarray:
    """(f_i + f_min (i/(N-1) - 1)) / f_max for a population sorted best first."""
    f = np.asarray(fitness, dtype=float)
    n = f.shape[0]
    f_min, f_max = float(f.min()), float(f.max())
    if n < 2 or f_max == f_min or f_max <= 0.0:
        return np.zeros(n)
    i = np.arange(n, dtype=float)
    return np.clip((f + f_min * (i / (n - 1) - 1.0)) / f_max, 0.0, 1.0)


def selected_block_genes(genes: np.ndarray) -> np.ndarray:
    """Indices of the block genes above the threshold gene."""
    return np.flatnonzero(genes[:-1] > genes[-1])


def make_child(rng: np.random.Generator, pool: list[Individual], num_genes: int) -> tuple[np.ndarray, tuple[int, int] | None]:
    """One offspring from the pool; a random genome when the pool has <= 2 members."""
    if len(pool) <= 2:
        return random_genome(rng, num_genes - 1), None
    i1, i2, ip = draw_parents(rng, len(pool))
    p1, p2, proto = pool[i1], pool[i2], pool[ip]
    child = crossover(rng, p1.genes, p2.genes)
    child = mutate(rng, child, (p1.extinction + p2.extinction) / 2.0)
    child = adopt(rng, child, p1.genes, p2.genes, proto.genes)
    return child, (i1, i2)


# --------------------------------------------------------------------------- the loop


@dataclass
class SearchResult:
    best: Individual


def _sorted(pop: list[Individual], *, extinction: bool = True) -> list[Individual]:
    """``pop`` sorted best first (stable: ties keep their order); with ``extinction`` each
    individual's extinction probability is set from its rank (else left as it is)."""
    pop = sorted(pop, key=lambda ind: ind.fitness)
    if extinction:
        for ind, p in zip(pop, extinction_probabilities([x.fitness for x in pop])):
            ind.extinction = float(p)
    return pop


def biotune_search(
    num_blocks: int,
    cfg: SearchConfig,
    evaluate: Evaluate,
    *,
    n_chunks: int = 1,
    on_generation: Callable[[int, list[Individual]], None] | None = None,
) -> SearchResult:
    """Run BioTune. Generation k (0 = initial population) is judged on chunk k mod n_chunks."""
    rng = np.random.default_rng(cfg.seed)
    n_genes = num_blocks + 1

    init = [random_genome(rng, num_blocks) for _ in range(cfg.population)]
    reqs = [EvalRequest(f"g0/init/{i}", g, 0, "init", 0) for i, g in enumerate(init)]
    fits = evaluate(reqs)
    # extinction probabilities are first computed after generation 1 (the authors' code): the
    # initial population's stay 0, so the first offspring are not mutated
    population = _sorted([Individual(r.genes, f, key=r.key) for r, f in zip(reqs, fits)], extinction=False)
    best = population[0]
    if on_generation:
        on_generation(0, population)

    for gen in range(1, cfg.generations + 1):
        chunk = gen % max(n_chunks, 1)
        # a. elite exploitation: two evaluations per elite, keep the best of three
        elites = population[: cfg.elite]
        reqs, plans = [], []
        for e, ind in enumerate(elites):
            sel = selected_block_genes(ind.genes)
            gi = int(rng.choice(sel)) if sel.size else int(rng.integers(num_blocks))
            delta = cfg.exploit_delta * rng.uniform(-1.0, 1.0)
            for sign, role in ((1.0, "elite_plus"), (-1.0, "elite_minus")):
                g = ind.genes.copy()
                g[gi] = np.clip(g[gi] + sign * delta, 0.0, 1.0)
                reqs.append(EvalRequest(f"g{gen}/{role}/{e}", g, gen, role, chunk))
            plans.append(ind)
        fits = evaluate(reqs) if reqs else []
        new_elites = []
        for e, ind in enumerate(plans):
            cands = [ind] + [
                Individual(reqs[2 * e + j].genes, fits[2 * e + j], ind.extinction, reqs[2 * e + j].key) for j in (0, 1)
            ]
            new_elites.append(min(cands, key=lambda c: c.fitness))  # min keeps the first on ties

        # b. offspring, each evaluated before the next is made. The mating pool is the population
        # with its elites improved in place (the authors' code): the exploited elites, with their
        # new fitness, and the rest, sorted best first
        pool = _sorted(new_elites + population[cfg.elite:], extinction=False)
        children = []
        for c in range(cfg.population - cfg.elite):
            genes, parents = make_child(rng, pool, n_genes)
            role = "child" if parents else "random_child"
            req = EvalRequest(f"g{gen}/{role}/{c}", genes, gen, role, chunk)
            (fit,) = evaluate([req])
            child = Individual(genes, fit, key=req.key)
            children.append(child)
            if parents:
                leaving = {id(pool[i]) for i in parents if pool[i].fitness > fit}
                pool = [p for p in pool if id(p) not in leaving]

        # c./d. sort, extinction probabilities, best so far
        population = _sorted(new_elites + children)
        if population[0].fitness < best.fitness:
            best = population[0]
        if on_generation:
            on_generation(gen, population)
    return SearchResult(best=best)
