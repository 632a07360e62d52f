"""The comparison methods of SPEC section 6, behind one interface.

``get_method(name)`` returns a :class:`PlanMethod` (``plan(model, base_lr,
**params) -> TrainingPlan``, run by :class:`evotune.training.Trainer`) or a
:class:`SearchMethod` (``search(evaluate, num_blocks, evo, n_chunks=...,
**params) -> SearchOutcome``, at BioTune's evaluation budget, through
:class:`evotune.search.evaluator.GenomeEvaluator`). One module per method:

========================  =======  ==============================================
name                      kind     module
========================  =======  ==============================================
full_finetune             plan     :mod:`.full_finetune`
from_scratch              plan     :mod:`.from_scratch` (a reference row: random weights)
linear_probe              plan     :mod:`.linear_probe`
surgical                  plan     :mod:`.surgical` (variants: one per block)
auto_rgn                  plan     :mod:`.auto_rgn`
l2_sp, l1_sp              plan     :mod:`.sp_regularization`
lora                      plan     :mod:`.lora`
deft                      search   :mod:`.deft`
random_search             search   :mod:`.random_search`
tpe                       search   :mod:`.tpe`
nsga2                     search   :mod:`.nsga2` (two objectives: val accuracy, trainable share)
biotune_confirmed         pick     BioTune's search, ``confirm.rule`` confirmed (:mod:`evotune.search.confirm`)
biotune_parsimonious      pick     BioTune's search, ``confirm.rule`` parsimonious
========================  =======  ==============================================
"""

from __future__ import annotations

from typing import Any

from ..errors import ParameterError
from ..params import check_type, require, section
from . import (
    auto_rgn,
    deft,
    from_scratch,
    full_finetune,
    linear_probe,
    lora,
    nsga2,
    random_search,
    sp_regularization,
    surgical,
    tpe,
)
from .base import (
    Budget,
    GenomeShare,
    Method,
    PickMethod,
    PlanMethod,
    SearchMethod,
    SearchOutcome,
    block_parameter_counts,
    evaluation_chunk,
    generation_equivalent,
    mask_share,
    trainable_parameters,
)

METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        full_finetune.METHOD,
        from_scratch.METHOD,
        linear_probe.METHOD,
        surgical.METHOD,
        auto_rgn.METHOD,
        sp_regularization.L2_SP,
        sp_regularization.L1_SP,
        lora.METHOD,
        deft.METHOD,
        random_search.METHOD,
        tpe.METHOD,
        nsga2.METHOD,
        PickMethod("biotune_confirmed", "BioTune's search; its top confirm.top_k genomes trained again on every chunk "
                   "with confirm.seeds, the best confirmed picked", {}, rule="confirmed"),
        PickMethod("biotune_parsimonious", "BioTune's search; among its confirmed top genomes not significantly worse "
                   "than the best, the fewest trainable parameters", {}, rule="parsimonious"),
    )
}

#: BioTune itself: always compared (the first row), by its own search (evotune.search.runner.run_biotune)
BIOTUNE = "biotune"

PLAN_METHODS = tuple(n for n, m in METHODS.items() if isinstance(m, PlanMethod))
SEARCH_METHODS = tuple(n for n, m in METHODS.items() if isinstance(m, SearchMethod))
PICK_METHODS = tuple(n for n, m in METHODS.items() if isinstance(m, PickMethod))


def get_method(name: str, parameter: str = "compare.methods") -> Method:
    """The method registered as ``name``; otherwise a ValueError naming ``parameter`` and the valid names."""
    try:
        return METHODS[name]
    except (KeyError, TypeError):
        raise ParameterError(
            f"Unknown method {name!r} in `{parameter}`; valid methods are {', '.join(METHODS)} "
            f"(conf/base/parameters_compare.yml); {BIOTUNE} is always compared, not listed."
        ) from None


def check_compare_params(compare: dict[str, Any], population: int | None = None) -> None:
    """Raise ParameterError listing every problem of the ``compare`` parameters (fast, no training);
    with ``population`` (``search.population``) also what the search baselines need of it."""
    problems: list[str] = []
    compare = section(compare, "compare")

    def check(fn, *args):
        try:
            return fn(*args)
        except ValueError as exc:  # ParameterError, or a method's own range check
            problems.append(str(exc))
            return None

    methods = check(lambda: check_type(require(compare, "methods", "compare"), list[str], "compare.methods")) or []
    if not methods and not problems:
        problems.append("compare.methods must list at least one method")
    for name in methods:
        m = check(get_method, name)
        if m is not None:
            resolved = check(lambda m=m, name=name: m.resolve_params(require(compare, name, "compare")))
            if resolved is not None and population is not None and getattr(m, "check", None) is not None:
                problems.extend(m.check(resolved, population))
    seeds = check(lambda: check_type(require(compare, "seeds", "compare"), list[int], "compare.seeds"))
    if seeds is not None and not seeds:
        problems.append("compare.seeds must list at least one seed")
    budgets = check(lambda: check_type(require(compare, "budgets", "compare"), list[float], "compare.budgets"))
    if budgets is not None and (not budgets or any(not 0.0 < float(b) <= 1.0 for b in budgets)):
        problems.append(f"compare.budgets must list fractions in (0, 1] of BioTune's evaluations, got {budgets}")
    resamplings = check(lambda: check_type(require(compare, "resamplings", "compare"), int, "compare.resamplings"))
    if resamplings is not None and resamplings < 1:
        problems.append(f"compare.resamplings must be at least 1 (1 = the run's split only), got {resamplings}")
    if problems:
        raise ParameterError("Invalid compare parameters:\n  - " + "\n  - ".join(problems))


__all__ = [
    "BIOTUNE",
    "METHODS",
    "PICK_METHODS",
    "PLAN_METHODS",
    "SEARCH_METHODS",
    "Budget",
    "GenomeShare",
    "Method",
    "PickMethod",
    "PlanMethod",
    "SearchMethod",
    "SearchOutcome",
    "block_parameter_counts",
    "check_compare_params",
    "evaluation_chunk",
    "generation_equivalent",
    "get_method",
    "mask_share",
    "trainable_parameters",
]
