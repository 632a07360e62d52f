"""The one interface of the comparison methods (SPEC section 6).

Two kinds of method, both built on the project's single training loop
(:mod:`evotune.training`):

* :class:`PlanMethod` - a fixed recipe: ``plan(model, base_lr, **params)``
  returns the :class:`~evotune.training.TrainingPlan` (which blocks train, at
  what rate, plus the optional hooks) that :meth:`Trainer.train` runs. A plan
  method may come in *variants* (surgical fine-tuning: one variant per block);
  the comparison trains every variant and keeps the best by validation.
* :class:`SearchMethod` - a search over BioTune's genome at BioTune's budget:
  ``search(evaluate, num_blocks, evo, n_chunks=..., **params)`` asks an
  ``evaluate`` callable (a :class:`~evotune.search.evaluator.GenomeEvaluator`) for the
  fitness of :class:`~evotune.search.evolution.EvalRequest` batches and returns the
  best genome, which is then retrained and tested exactly like BioTune's.

Search budget and data schedule
-------------------------------
A search baseline makes exactly ``SearchConfig.evaluations`` =
N + G (2E + N - E) evaluations, BioTune's count. Evaluation ``j`` (0-based, in
request order) belongs to the *generation-equivalent*

    k(j) = 0                        if j < N
    k(j) = 1 + (j - N) // (N + E)   otherwise

(BioTune's j-th evaluation belongs to generation k(j): N initial genomes, then
2E elite variants + N - E children per generation) and is judged on search
chunk ``k(j) mod n_chunks``, the chunk BioTune's j-th evaluation uses. Every
search therefore sees the same data in the same order. :class:`Budget`
assigns these and refuses any evaluation beyond the budget.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import optuna

from ..backbones import StagedModel, count_parameters
from ..errors import ParameterError
from ..genome import decode
from ..params import check_type, missing_message
from ..search.config import SearchConfig
from ..search.evolution import EvalRequest
from ..training import TrainingPlan, apply_freezing, default_param_groups

log = logging.getLogger(__name__)

PARAMS_FILE = "conf/base/parameters_compare.yml"


# --------------------------------------------------------------------------- methods


@dataclass(frozen=True)
class Method:
    """A comparison method: a name, a summary and its parameters' types.

    Its parameters are ``compare.<name>`` in conf/base/parameters_compare.yml, the one
    place that holds their defaults: every key of ``param_types`` is required.
    ``internal_params`` are keys a method sets for itself (surgical's ``block`` per variant).
    """

    name: str
    summary: str
    param_types: Mapping[str, Any] = field(default_factory=dict)
    kind: ClassVar[str] = "method"
    internal_params: ClassVar[frozenset[str]] = frozenset()

    def resolve_params(self, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """``params`` checked: an unknown or missing key, or a value of the wrong type, is a
        :class:`~evotune.errors.ParameterError` naming ``compare.<name>.<key>``."""
        params = dict(params or {})
        path = f"compare.{self.name}"
        unknown = sorted(set(params) - set(self.param_types) - self.internal_params)
        if unknown:
            valid = ", ".join(sorted(self.param_types)) or "none"
            raise ParameterError(
                f"{path}: unknown parameter(s) {unknown} for method '{self.name}'; valid keys are "
                f"{valid} ({PARAMS_FILE})."
            )
        missing = [f"{path}.{k}" for k in self.param_types if k not in params]
        if missing:
            raise ParameterError(missing_message(missing))
        out = {k: check_type(params[k], t, f"{path}.{k}") for k, t in self.param_types.items()}
        return {**params, **out}


@dataclass(frozen=True)
class PlanMethod(Method):
    """A fixed training recipe, as a :class:`TrainingPlan`."""

    #: ``build(model, base_lr, **params) -> TrainingPlan`` (params already resolved)
    build: Callable[..., TrainingPlan] | None = None
    #: ``variants(model, params) -> [(label, params)]``; default: one variant named after the method
    variants_fn: Callable[[StagedModel, dict], list[tuple[str, dict]]] | None = None
    #: ``export(state_dict) -> state_dict`` loadable into the pristine model (LoRA merges its adapters)
    export_fn: Callable[[dict], dict] | None = None
    kind: ClassVar[str] = "plan"

    def plan(self, model: StagedModel, base_lr: float, **params: Any) -> TrainingPlan:
        return self.build(model, float(base_lr), **self.resolve_params(params))

    def variants(self, model: StagedModel, **params: Any) -> list[tuple[str, dict]]:
        p = self.resolve_params(params)
        return self.variants_fn(model, p) if self.variants_fn else [(self.name, p)]

    def export_state(self, state_dict: dict | None) -> dict | None:
        """A trained state (``TrainResult.best_state``) as keys of the pristine model."""
        if state_dict is None or self.export_fn is None:
            return state_dict
        return self.export_fn(state_dict)


@dataclass
class SearchOutcome:
    """What a search baseline found.

    ``best_genes`` are B + 1 genes that :func:`evotune.genome.decode` (and so
    ``genome_plan`` / ``retrain_best_genome``) turns into the method's plan.
    """

    best_genes: np.ndarray
    best_fitness: float
    best_key: str
    evaluations: int
    rows: list[dict] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SearchMethod(Method):
    """A search over the block genome at BioTune's evaluation budget."""

    #: ``run(budget, num_blocks, seed, **params) -> dict | None`` (extra facts for the record);
    #: it must spend the whole :class:`Budget`, whose rows and best it leaves behind
    run: Callable[..., dict | None] | None = None
    #: ``check(params, population) -> [problems]``: ranges, checked before anything runs
    check: Callable[[dict, int], list[str]] | None = None
    kind: ClassVar[str] = "search"

    def search(
        self,
        evaluate: Callable[[list[EvalRequest]], list[float]],
        num_blocks: int,
        evo: SearchConfig,
        *,
        n_chunks: int = 1,
        block_params: Sequence[int] | None = None,
        total_params: int | None = None,
        **params: Any,
    ) -> SearchOutcome:
        """Run the search at BioTune's budget. ``block_params`` / ``total_params``: the parameter count of
        each backbone block and of the whole model, for the trainable share of a genome (a multi-objective
        search's second objective); by default counted on ``evaluate.trainer.model`` (a
        :class:`~evotune.search.evaluator.GenomeEvaluator`'s model)."""
        p = self.resolve_params(params)
        seed = evo.seed if p.get("seed") is None else int(p["seed"])
        if block_params is None and isinstance(getattr(getattr(evaluate, "trainer", None), "model", None),
                                               StagedModel):
            block_params, total_params = block_parameter_counts(evaluate.trainer.model)
        share = None
        if block_params is not None:
            share = GenomeShare(list(block_params), total_params, evo.force_head_trainable)
        budget = Budget(evaluate, evo, n_chunks, share=share)
        extra = self.run(budget, num_blocks, seed, **{k: v for k, v in p.items() if k != "seed"}) or {}
        if budget.remaining:
            raise RuntimeError(f"{self.name} stopped after {budget.used} of {budget.total} evaluations")
        best = budget.best
        return SearchOutcome(
            best_genes=np.asarray(best["genes"], dtype=float),
            best_fitness=float(best["fitness"]),
            best_key=str(best["key"]),
            evaluations=budget.used,
            rows=budget.rows,
            extra={**extra, "seed": seed},
        )


@dataclass(frozen=True)
class PickMethod(Method):
    """BioTune's own search (``compare.biotune``) with another final pick (``confirm.rule`` ``rule``): its top
    genomes confirmed on every chunk with ``confirm.seeds`` on each resampling (:mod:`evotune.search.confirm`),
    the picked genome retrained and tested like BioTune's."""

    rule: str = "confirmed"
    kind: ClassVar[str] = "pick"


# --------------------------------------------------------------------------- budget


def generation_equivalent(index: int, evo: SearchConfig) -> int:
    """The BioTune generation whose evaluations include evaluation ``index`` (0-based)."""
    if index < evo.population:
        return 0
    return 1 + (index - evo.population) // (evo.population + evo.elite)


def evaluation_chunk(index: int, evo: SearchConfig, n_chunks: int) -> int:
    """Search chunk of evaluation ``index``: generation-equivalent mod n_chunks."""
    return generation_equivalent(index, evo) % max(int(n_chunks), 1)


class Budget:
    """Hands a search's genomes to ``evaluate`` with BioTune's budget and data schedule.

    Tracks every evaluation (``rows``) and the best one (lowest fitness, first on ties).
    """

    def __init__(self, evaluate: Callable[[list[EvalRequest]], list[float]], evo: SearchConfig,
                 n_chunks: int, share: GenomeShare | None = None) -> None:
        self.evaluate_fn = evaluate
        #: a genome's trainable share (None when the model's parameter counts are not known)
        self.share = share
        self.evo = evo
        self.n_chunks = max(int(n_chunks), 1)
        self.total = int(evo.evaluations)
        self.used = 0
        self.rows: list[dict] = []
        self.best: dict | None = None

    @property
    def remaining(self) -> int:
        return self.total - self.used

    def left_in_generation(self) -> int:
        """Evaluations left before the next generation-equivalent starts (never beyond the budget)."""
        k = generation_equivalent(self.used, self.evo)
        end = self.evo.population + k * (self.evo.population + self.evo.elite)
        return min(end, self.total) - self.used

    def evaluate(self, items: Sequence[tuple[str, Any, str]], extras: Sequence[dict] | None = None) -> list[float]:
        """Evaluate ``(key, genes, role)`` items, in order; returns their fitness."""
        items = list(items)
        if len(items) > self.remaining:
            raise RuntimeError(f"budget exceeded: {len(items)} evaluations asked, {self.remaining} left "
                               f"of {self.total}")
        reqs = []
        for n, (key, genes, role) in enumerate(items):
            j = self.used + n
            reqs.append(EvalRequest(str(key), np.asarray(genes, dtype=float), generation_equivalent(j, self.evo),
                                    str(role), evaluation_chunk(j, self.evo, self.n_chunks)))
        fits = [float(f) for f in self.evaluate_fn(reqs)] if reqs else []
        if len(fits) != len(reqs):
            raise RuntimeError(f"evaluate returned {len(fits)} values for {len(reqs)} requests")
        for n, (r, f) in enumerate(zip(reqs, fits)):
            row = {"index": self.used + n, "key": r.key, "generation": r.generation, "chunk": r.chunk,
                   "role": r.role, "fitness": f, "genes": [float(x) for x in r.genes],
                   **(extras[n] if extras else {})}
            self.rows.append(row)
            if self.best is None or f < self.best["fitness"]:
                self.best = row
        self.used += len(reqs)
        return fits


# --------------------------------------------------------------------------- helpers


def block_parameter_counts(model: StagedModel) -> tuple[list[int], int]:
    """The parameter count of each block of ``model`` (head last) and of the whole model."""
    return [count_parameters(model, [i]) for i in range(model.num_blocks)], count_parameters(model)


def mask_share(mask: str, block_params: Sequence[int], total_params: int) -> float:
    """The share of the model's parameters a block mask (``"001111"``, head last) trains: the parameters
    of its blocks over all of the model's, the count the comparison's ``trainable_share`` of a genome uses."""
    if len(mask) != len(block_params):
        raise ValueError(f"mask {mask!r} has {len(mask)} blocks, the model {len(block_params)}")
    return float(sum(n for c, n in zip(mask, block_params) if c == "1")) / float(total_params)


@dataclass(frozen=True)
class GenomeShare:
    """``share(genes)``: the trainable share of a genome, decoded with the search's head policy."""

    block_params: list[int]
    total_params: int | None
    force_head: bool

    def __call__(self, genes) -> float:
        total = self.total_params if self.total_params is not None else sum(self.block_params)
        return mask_share(decode(genes, 1.0, force_head=self.force_head).mask, self.block_params, total)



def trainable_parameters(model: StagedModel, plan: TrainingPlan) -> int:
    """Number of parameter elements ``plan`` trains, counted on the model as the plan prepares it.

    Runs the plan's ``prepare`` (and then the undo it returns), freezing and
    parameter groups exactly as :meth:`Trainer.train` does, so LoRA adapters count
    and frozen batch-norm tensors (Auto-RGN) do not.
    """
    undo = plan.prepare(model) if plan.prepare is not None else None
    try:
        apply_freezing(model, plan)
        groups = (plan.param_groups or default_param_groups)(model, plan.block_lrs)
        seen: set[int] = set()
        total = 0
        for g in groups:
            for p in g["params"]:
                if id(p) not in seen and p.requires_grad:
                    seen.add(id(p))
                    total += p.numel()
        return total
    finally:
        if undo is not None:
            undo()


def backbone_block_index(model: StagedModel, block: int | str) -> int:
    """Index of a backbone block (not the head) given by index or name."""
    names = list(model.block_names)
    if isinstance(block, str) and not block.lstrip("-").isdigit():
        if block not in names:
            raise ValueError(f"Unknown block {block!r}; the blocks of {model.arch} are {names}.")
        i = names.index(block)
    else:
        i = int(block)
        if not 0 <= i < len(names):
            raise ValueError(f"Block index {i} out of range for {model.arch}'s {len(names)} blocks {names}.")
    if i == model.head_index:
        raise ValueError(f"Block {names[i]!r} is the head; training the head alone is the linear_probe method.")
    return i


# --------------------------------------------------------------------------- Optuna samplers as methods


def genome_space(num_blocks: int) -> dict[str, optuna.distributions.BaseDistribution]:
    """The genome as the search space of a method's own in-memory Optuna study: one ``FloatDistribution(0, 1)``
    per gene, named ``g00..gNN`` in gene order (the sampler's names, never stored: the persistent search study
    records the genes under their block names; renamed, a seeded sampler would propose other genomes)."""
    return {f"g{i:02d}": optuna.distributions.FloatDistribution(0.0, 1.0) for i in range(num_blocks + 1)}


def ask_genes(study: optuna.Study, space: dict[str, optuna.distributions.BaseDistribution]
              ) -> tuple[optuna.trial.Trial, np.ndarray]:
    """The sampler's next genome: its trial (to tell the result to) and the genes in gene order."""
    trial = study.ask(space)
    return trial, np.array([trial.params[n] for n in space], dtype=float)


@contextmanager
def quiet_sampler() -> Iterator[None]:
    """While a method's in-memory study runs: Optuna's per-trial info lines and its experimental-feature
    warnings (TPE's multivariate, NSGA-II's options) off; the evaluator reports progress instead."""
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            yield
    finally:
        optuna.logging.set_verbosity(level)
