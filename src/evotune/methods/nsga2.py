"""A multi-objective search baseline: Optuna's NSGA-II sampler over BioTune's genome.

The same genome, decoding and budget as the other search baselines (:mod:`.tpe`,
:mod:`.random_search`): each gene is a ``FloatDistribution(0, 1)`` parameter ``g00..gNN`` of an
in-memory Optuna study (the sampler's own; the persistent search study records every evaluation
under the block names, as for every search). Its two objectives:

* the validation macro accuracy of the evaluation, ``1 - fitness`` (maximised);
* the trainable share of the genome, the parameters of its trained blocks (after the head
  policy ``search.force_head_trainable``) over the model's (minimised;
  :class:`~evotune.methods.base.GenomeShare`).

``NSGAIISampler(population_size, seed, crossover_prob, swapping_prob, mutation_prob)`` proposes one
genome at a time (ask), it is evaluated through the same evaluator as BioTune's and both objectives
are told back. ``population_size`` defaults to BioTune's N. A genome that selects no block (or whose
training diverged) is told (0, 1): dominated by every trained genome. The genome retrained and tested
by the comparison is the one with the best validation accuracy (the rule every search of the table
follows); the whole front is in the search's trials (``val_acc`` and the genome's mask) and in the
report's Pareto table. Seeded and given the recorded fitness back on a rerun, it replays the same
proposals.
"""

from __future__ import annotations

import optuna
from optuna.study import StudyDirection

from ..genome import WORST_FITNESS
from .base import Budget, SearchMethod, ask_genes, genome_space, quiet_sampler

#: the objectives, in the order they are told to the sampler
OBJECTIVES = ("val macro acc", "trainable share")
DIRECTIONS: tuple[StudyDirection, ...] = (StudyDirection.MAXIMIZE, StudyDirection.MINIMIZE)


def objectives(fitness: float, share: float) -> tuple[float, float]:
    """(validation accuracy, trainable share) of an evaluation; (0, 1) for one that trained nothing or diverged."""
    if fitness >= WORST_FITNESS:
        return 0.0, 1.0
    return 1.0 - float(fitness), float(share)


def run(budget: Budget, num_blocks: int, seed: int, population_size: int | None = None,
        crossover_prob: float = 0.9, swapping_prob: float = 0.5, mutation_prob: float | None = None) -> dict:
    if budget.share is None:
        raise ValueError("nsga2 needs the model's parameter counts (block_params) for its trainable-share objective")
    problems = check({"population_size": population_size, "crossover_prob": crossover_prob,
                      "swapping_prob": swapping_prob, "mutation_prob": mutation_prob}, budget.evo.population)
    if problems:
        raise ValueError("; ".join(problems))
    space = genome_space(num_blocks)
    size = budget.evo.population if population_size is None else int(population_size)
    with quiet_sampler():
        sampler = optuna.samplers.NSGAIISampler(
            population_size=size, seed=int(seed), crossover_prob=float(crossover_prob),
            swapping_prob=float(swapping_prob), mutation_prob=None if mutation_prob is None else float(mutation_prob))
        study = optuna.create_study(directions=list(DIRECTIONS), sampler=sampler)
        while budget.remaining:
            j = budget.used
            trial, genes = ask_genes(study, space)
            share = budget.share(genes)
            (fitness,) = budget.evaluate([(f"nsga2/{j}", genes, "nsga2")], [{"trainable_share": share}])
            study.tell(trial, objectives(fitness, share))
        front = len(study.best_trials)
    return {"population_size": size, "front_size": front}


def check(params: dict, population: int) -> list[str]:
    """NSGA-II's ranges (checked before anything runs)."""
    problems = []
    size = params.get("population_size")
    if size is not None and int(size) < 2:
        problems.append(f"compare.nsga2.population_size must be at least 2 (null = search.population), got {size}")
    for key in ("crossover_prob", "swapping_prob"):
        if not 0.0 <= float(params[key]) <= 1.0:
            problems.append(f"compare.nsga2.{key} must be in [0, 1], got {params[key]}")
    m = params.get("mutation_prob")
    if m is not None and not 0.0 <= float(m) <= 1.0:
        problems.append(f"compare.nsga2.mutation_prob must be in [0, 1] (null = 1 / number of genes), got {m}")
    return problems


METHOD = SearchMethod(
    "nsga2", "Optuna NSGA-II over the genome: validation accuracy up, trainable share down; BioTune's budget",
    {"seed": int | None, "population_size": int | None, "crossover_prob": float, "swapping_prob": float,
     "mutation_prob": float | None},
    run, check=check,
)
