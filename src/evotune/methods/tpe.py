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

import optuna

from .base import Budget, SearchMethod, ask_genes, genome_space, quiet_sampler


def run(budget: Budget, num_blocks: int, seed: int, n_startup_trials: int | None = None,
        multivariate: bool = True) -> dict:
    space = genome_space(num_blocks)
    startup = budget.evo.population if n_startup_trials is None else int(n_startup_trials)
    with quiet_sampler():
        sampler = optuna.samplers.TPESampler(seed=int(seed), n_startup_trials=startup, multivariate=bool(multivariate))
        study = optuna.create_study(direction="minimize", sampler=sampler)
        while budget.remaining:
            j = budget.used
            trial, genes = ask_genes(study, space)
            (fitness,) = budget.evaluate([(f"tpe/{j}", genes, "tpe")])
            study.tell(trial, fitness)
    return {"n_startup_trials": startup}


METHOD = SearchMethod("tpe", "Optuna TPE sampler over the genome, BioTune's decoding and budget",
                      {"seed": int | None, "n_startup_trials": int | None, "multivariate": bool}, run)
