"""A model-based search baseline: Optuna's TPE sampler over BioTune's genome.

Each gene is a ``FloatDistribution(0, 1)`` parameter ``g00..gNN`` (gene index order)
of an in-memory Optuna study (the sampler's own, never stored: the persistent
search study records the genes under their block names) whose sampler is
``TPESampler(seed, n_startup_trials, multivariate)``; TPE proposes one genome
at a time (ask), it is evaluated through the same evaluator as BioTune's (which
records it in the persistent search study), and its fitness is told back. The
first ``n_startup_trials`` (default: BioTune's N) are TPE's random start-up.
A proposed genome that selects no block is not trained and gets the worst
fitness (SPEC section 2), and counts against the budget. Because the sampler is
seeded and a rerun gets the recorded fitness values back, a rerun replays the
same proposals.
"""

from __future__ import annotations

import warnings

import numpy as np
import optuna

from .base import Budget, SearchMethod


def run(budget: Budget, num_blocks: int, seed: int, n_startup_trials: int | None = None,
        multivariate: bool = True) -> dict:
    names = [f"g{i:02d}" for i in range(num_blocks + 1)]  # kept: renamed, the seeded sampler would propose others
    dists = {n: optuna.distributions.FloatDistribution(0.0, 1.0) for n in names}
    startup = budget.evo.population if n_startup_trials is None else int(n_startup_trials)
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            sampler = optuna.samplers.TPESampler(seed=int(seed), n_startup_trials=startup,
                                                 multivariate=bool(multivariate))
        study = optuna.create_study(direction="minimize", sampler=sampler)
        while budget.remaining:
            j = budget.used
            trial = study.ask(dists)
            genes = np.array([trial.params[n] for n in names], dtype=float)
            (fitness,) = budget.evaluate([(f"tpe/{j}", genes, "tpe")])
            study.tell(trial, fitness)
    finally:
        optuna.logging.set_verbosity(level)
    return {"n_startup_trials": startup}


METHOD = SearchMethod("tpe", "Optuna TPE sampler over the genome, BioTune's decoding and budget",
                      {"seed": int | None, "n_startup_trials": int | None, "multivariate": bool}, run)
