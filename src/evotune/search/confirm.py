"""The confirmation stage: a final pick that resists the winner's curse (docs/method/pareto.md).

The search's best genome is the best of many noisy evaluations, each on one search chunk with the
search seeds: an optimistic, partly random pick. The confirmation evaluates the search's top ``k``
distinct genomes again, on **every** search chunk, once per confirmation seed (seeds other than the
search's, so the confirmation's noise is independent of the selection's), exactly as the search
evaluates a genome (evotune.search.evaluator.train_genome: same trainer, chunks, head policy
and learning rates). The pick then follows ``confirm.rule``:

* ``best``: the search's best genome, the paper's rule (the default); nothing is trained;
* ``confirmed``: the genome with the highest mean confirmed validation macro accuracy;
* ``parsimonious``: among the genomes not significantly worse than the confirmed best (the 95 %
  t-interval of the paired differences over the (chunk, seed) pairs reaches 0), the one training the
  fewest parameters (ties: the higher confirmed accuracy).

A training that diverged counts as accuracy 0 (the search's rule: a diverged genome gets the worst
fitness). The cost, ``k x chunks x seeds`` trainings, is recorded in the picked genome
(``confirm_trainings``, ``confirm_seconds``) and reported.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ..errors import ParameterError
from ..genome import WORST_FITNESS, decode, gene_names
from ..lineage import now
from ..params import from_params
from ..report.significance import CONFIDENCE, t_interval
from ..training import TrainConfig
from .config import SearchConfig
from .evaluator import train_genome
from .records import GenomeRecord, genome_record

log = logging.getLogger(__name__)

RULES = ("best", "confirmed", "parsimonious")

#: the columns of the ``confirmation`` table (one row per confirmed genome)
CONFIRM_COLUMNS = ["key", "search_rank", "search_fitness", "mask", "trainable_share", "confirmed_val_acc",
                   "val_accs", "trainings", "seconds", "diff_to_best", "diff_low", "diff_high",
                   "not_worse", "picked"]


@dataclass(frozen=True)
class ConfirmConfig:
    """The ``confirm`` parameters (conf/base/parameters_confirm.yml), every key required."""

    rule: str
    top_k: int
    seeds: tuple[int, ...]

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise ParameterError(f"confirm.rule must be one of {', '.join(RULES)}, got {self.rule!r} "
                                 "(conf/base/parameters_confirm.yml)")
        if self.top_k < 1:
            raise ParameterError(f"confirm.top_k must be at least 1, got {self.top_k}")
        if self.rule == "parsimonious" and self.top_k < 2:
            raise ParameterError("confirm.rule parsimonious needs confirm.top_k >= 2 (genomes to choose among), "
                                 f"got {self.top_k}")
        if not self.seeds:
            raise ParameterError("confirm.seeds must list at least one seed")
        if len(set(self.seeds)) != len(self.seeds):
            raise ParameterError(f"confirm.seeds must be distinct, got {list(self.seeds)}")

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> ConfirmConfig:
        return from_params(cls, params, "confirm")

    @property
    def trains(self) -> bool:
        """Whether the rule needs the confirmation's trainings (``best`` does not)."""
        return self.rule != "best"


def top_genomes(trials: pd.DataFrame, best_key: str, k: int, block_names: list[str]) -> list[dict[str, Any]]:
    """The search's best genome (``best_key``) and the next best distinct genomes (by search fitness, earliest
    first on ties), ``k`` in all (fewer when the search met fewer valid ones): ``key``, ``genes``, ``fitness``."""
    names = gene_names(block_names)
    missing = [c for c in ("key", "fitness", *names) if c not in trials.columns]
    if missing:
        raise ValueError(f"confirm: the search trials have no column(s) {missing}")
    ok = trials["fitness"].astype(float) < WORST_FITNESS
    t = trials[ok].copy()
    t["_order"] = range(len(t))
    t = t.sort_values(["fitness", "_order"], kind="stable")
    if best_key in set(t["key"]):
        t = pd.concat([t[t["key"] == best_key].iloc[:1], t[t["key"] != best_key]])
    out: list[dict[str, Any]] = []
    seen: set[tuple[float, ...]] = set()
    for r in t.to_dict("records"):
        genes = tuple(float(r[n]) for n in names)
        if genes in seen:
            continue
        seen.add(genes)
        out.append({"key": str(r["key"]), "genes": np.array(genes), "fitness": float(r["fitness"])})
        if len(out) == k:
            break
    return out


def pick(table: pd.DataFrame, rule: str, confidence: float = CONFIDENCE) -> pd.DataFrame:
    """``table`` (one row per confirmed genome, ``search_rank`` 0 the search's best, ``val_accs`` the accuracies
    per (chunk, seed) in one order for all) with the paired differences to the confirmed best, ``not_worse``
    and the ``picked`` row set by ``rule``."""
    if rule not in RULES:
        raise ValueError(f"unknown pick rule {rule!r}; rules: {', '.join(RULES)}")
    t = table.copy().reset_index(drop=True)
    if rule == "best" or not len(t):
        t["picked"] = t["search_rank"] == 0
        return t
    t["confirmed_val_acc"] = [float(np.mean(v)) for v in t["val_accs"]]
    top = int(t["confirmed_val_acc"].to_numpy().argmax())  # first on ties: the better search rank
    ref = np.asarray(t.at[top, "val_accs"], dtype=float)
    diffs, lows, highs = [], [], []
    for v in t["val_accs"]:
        d = np.asarray(v, dtype=float) - ref
        iv = t_interval(d, confidence)
        diffs.append(iv.mean)
        lows.append(iv.low)
        highs.append(iv.high)
    t["diff_to_best"], t["diff_low"], t["diff_high"] = diffs, lows, highs
    # not significantly worse: the interval reaches 0 (the best itself: differences all 0)
    t["not_worse"] = [i == top or not (h < 0) for i, h in enumerate(highs)]
    if rule == "confirmed":
        chosen = top
    else:
        cands = t[t["not_worse"]].sort_values(["trainable_share", "confirmed_val_acc", "search_rank"],
                                              ascending=[True, False, True], kind="stable")
        chosen = int(cands.index[0])
    t["picked"] = [i == chosen for i in range(len(t))]
    return t


def confirm_genomes(trainer, chunks: dict, candidates: list[dict[str, Any]], cfg: ConfirmConfig, *,
                    base_lr: float, force_head: bool, share, train_genome) -> pd.DataFrame:
    """Train every candidate on every chunk once per confirmation seed (``train_genome``:
    :func:`evotune.search.evaluator.train_genome`); the confirmation table before the pick."""
    rows = []
    for rank, c in enumerate(candidates):
        accs, seconds = [], 0.0
        for chunk in sorted(chunks):
            for seed in cfg.seeds:
                out = train_genome(trainer, chunks, f"confirm/{c['key']}", int(seed), int(chunk),
                                   tuple(float(g) for g in c["genes"]), base_lr=base_lr, force_head=force_head)
                accs.append(0.0 if out["diverged"] else float(out["val_acc"]))
                seconds += float(out["seconds"])
        d = decode(c["genes"], base_lr, force_head=force_head)
        rows.append({"key": c["key"], "search_rank": rank, "search_fitness": c["fitness"], "mask": d.mask,
                     "trainable_share": share(c["genes"]), "confirmed_val_acc": float(np.mean(accs)),
                     "val_accs": accs, "trainings": len(accs), "seconds": seconds})
        log.info("confirm %d/%d %s (mask %s): val macro acc %.4f over %d trainings (search: %.4f)", rank + 1,
                 len(candidates), c["key"], d.mask, float(np.mean(accs)), len(accs), 1.0 - c["fitness"])
    return pd.DataFrame(rows)


def confirmation_table(table: pd.DataFrame) -> pd.DataFrame:
    """The table with every column of :data:`CONFIRM_COLUMNS` (NaN where a rule computed nothing)."""
    t = table.copy()
    for c in CONFIRM_COLUMNS:
        if c not in t.columns:
            t[c] = np.nan if c not in ("not_worse", "picked") else False
    return t[CONFIRM_COLUMNS]


def confirm_candidates(backbone, train, val, trials: pd.DataFrame, best: GenomeRecord, cfg: ConfirmConfig,
                       search_params: dict, training_params: dict, label: str = "confirm") -> pd.DataFrame:
    """The confirmation's trainings, the same for every rule that trains: the search's top ``cfg.top_k`` distinct
    genomes (``trials``, its best genome ``best`` first) trained on every search chunk once per ``cfg.seeds``; the
    table before the pick (one row per genome, ``search_rank`` 0 the search's best). ``label`` heads the log line."""
    from ..methods import GenomeShare, block_parameter_counts
    from .runner import evaluation_setup

    scfg = SearchConfig.from_params(search_params)
    training = TrainConfig.from_params(training_params)
    trainer, _, _, chunks = evaluation_setup(backbone, train, val, scfg, training)
    counts, total = block_parameter_counts(trainer.model)
    share = GenomeShare(counts, total, scfg.force_head_trainable)
    candidates = top_genomes(trials, best.key, cfg.top_k, list(best.block_names))
    log.info("%s: %d genome(s) x %d chunk(s) x %d seed(s) = %d trainings", label, len(candidates), len(chunks),
             len(cfg.seeds), len(candidates) * len(chunks) * len(cfg.seeds))
    return confirm_genomes(trainer, chunks, candidates, cfg, base_lr=training.base_lr,
                           force_head=scfg.force_head_trainable, share=share, train_genome=train_genome)


def pick_genome(confirmed: pd.DataFrame, trials: pd.DataFrame, best: GenomeRecord, backbone, cfg: ConfirmConfig,
                search_params: dict, training_params: dict) -> tuple[pd.DataFrame, GenomeRecord]:
    """The genome ``cfg.rule`` picks from a confirmation (:func:`confirm_candidates` of this search: ``trials``, its
    best genome ``best``): the confirmation table with the pick and the picked genome's record (``pick_rule``,
    ``search_best_key``, ``confirm_trainings``, ``confirm_seconds``, ``confirmed_val_acc``). Nothing is trained.

    Raises ``ValueError`` when ``confirmed`` does not hold this search's top genomes, in order."""
    scfg = SearchConfig.from_params(search_params)
    training = TrainConfig.from_params(training_params)
    candidates = top_genomes(trials, best.key, cfg.top_k, list(best.block_names))
    keys = [str(k) for k in confirmed.sort_values("search_rank")["key"]]
    if keys != [c["key"] for c in candidates]:
        raise ValueError(f"the confirmation holds the genomes {keys}, not this search's top {cfg.top_k} "
                         f"{[c['key'] for c in candidates]}: it was made for another search or another confirm.top_k")
    table = pick(confirmed.sort_values("search_rank").reset_index(drop=True), cfg.rule)
    row = table[table["picked"]].iloc[0]
    chosen = candidates[int(row["search_rank"])]
    fresh = genome_record(chosen["genes"], fitness=chosen["fitness"], key=chosen["key"], backbone=backbone,
                          block_names=list(best.block_names), base_lr=training.base_lr,
                          force_head=scfg.force_head_trainable, study_name=best.study_name, storage=best.storage,
                          evaluations=best.evaluations, trainings=best.trainings, device=best.device,
                          search_seconds=best.search_seconds, created=now())
    picked = dataclasses.replace(
        best, **{f: getattr(fresh, f) for f in ("genes", "threshold", "mask", "block_lrs", "lr_multipliers", "fitness",
                                                "key", "created")},
        pick_rule=cfg.rule, search_best_key=best.key, confirm_trainings=int(table["trainings"].sum()),
        confirm_seconds=float(table["seconds"].sum()), confirmed_val_acc=float(row["confirmed_val_acc"]))
    log.info("confirm.rule %s picked %s (mask %s, confirmed val macro acc %.4f); the search's best was %s (mask %s)",
             cfg.rule, picked.key, picked.mask, picked.confirmed_val_acc, best.key, best.mask)
    return confirmation_table(table), picked


def run_confirmation(backbone, train, val, trials: pd.DataFrame, best: GenomeRecord, cfg: ConfirmConfig,
                     search_params: dict, training_params: dict) -> tuple[pd.DataFrame, GenomeRecord]:
    """The confirmation of a search (``trials``, its best genome ``best``) on its train and val splits, and the
    genome ``cfg.rule`` picks (:func:`confirm_candidates` then :func:`pick_genome`; rule ``best`` trains nothing)."""
    if not cfg.trains:
        table = pd.DataFrame([{"key": best.key, "search_rank": 0, "search_fitness": best.fitness,
                               "mask": best.mask, "trainings": 0, "seconds": 0.0, "val_accs": []}])
        table = confirmation_table(pick(table, cfg.rule))
        log.info("confirm.rule best: the search's best genome %s (mask %s), nothing trained", best.key, best.mask)
        return table, dataclasses.replace(best, pick_rule=cfg.rule, search_best_key=best.key, confirm_trainings=0,
                                          confirm_seconds=0.0, created=now())
    confirmed = confirm_candidates(backbone, train, val, trials, best, cfg, search_params, training_params,
                                   label=f"confirm.rule {cfg.rule}")
    return pick_genome(confirmed, trials, best, backbone, cfg, search_params, training_params)
