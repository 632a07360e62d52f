#!/usr/bin/env python
"""Would stopping hopeless genomes early pay? Replay a finished search offline.

Issue 5 asks to *measure first* before stopping hopeless genome evaluations early
against the population so far. This script takes the trials table of a finished
search (``data/07_model_output/search_trials.parquet/<version>/search_trials.parquet``, which
records each seed's validation accuracy after every epoch) and replays, in the order
the search ran them, a percentile pruning rule of the kind Optuna's
``PercentilePruner`` applies:

    after epoch k >= ``warmup``, stop a training whose best validation accuracy so far
    is below the ``percentile``-th percentile of the best-so-far accuracies at epoch k
    of every training finished before it (at least ``min_reference`` of them; a
    reference that stopped before epoch k counts with its final best).

With ``--skip-seeds`` a genome whose first pruned training stops also skips its other
seeds. A pruned training's accuracy is its best so far (what a search would record).

It prints, per rule: the share of training epochs and of training time saved, how
many of the search's top genomes (by the unpruned fitness) the rule would have cut,
whether the best genome would have been cut, and the rank correlation between
pruned and unpruned fitness. The replay keeps the search's trajectory fixed: a real
pruned search would select other parents after a false cut, so a rule that cuts any
top genome changes the search, not only its cost.

Example::

    python scripts/pruning_replay.py data/07_model_output/search_trials.parquet/<version>/search_trials.parquet
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class Rule:
    percentile: float
    warmup: int
    min_reference: int = 5
    skip_seeds: bool = False

    def __str__(self) -> str:
        s = f"p{self.percentile:g} after epoch {self.warmup}"
        return s + (" +skip seeds" if self.skip_seeds else "")


def load_trials(path: Path) -> pd.DataFrame:
    if not path.exists():
        raise SystemExit(f"{path}: no such file. Give the search_trials.parquet of a finished search "
                         "(data/07_model_output/search_trials.parquet/<version>/search_trials.parquet).")
    try:
        trials = pd.read_parquet(path)
    except Exception as exc:  # not Parquet (an old search_trials.csv), or not a trials table
        raise SystemExit(f"{path} is not a search_trials.parquet with per-epoch histories ({type(exc).__name__}). "
                         "Give the one a search writes (data/07_model_output/search_trials.parquet/<version>/"
                         "search_trials.parquet); run the search again (kedro run --pipelines search) for it.") from None
    trials = trials[trials["valid"] & ~trials["cached"]].copy()
    trials["histories"] = trials["val_histories"].map(lambda hs: [[float(x) for x in h] for h in hs])
    trials = trials[trials["histories"].map(len) > 0]
    if trials.empty:
        raise SystemExit(f"{path}: no trained evaluation with per-epoch histories (all cached or invalid?).")
    return trials.reset_index(drop=True)


def best_so_far(history: list[float], k: int) -> float:
    """Best accuracy over the first ``k`` epochs (a shorter history counts with its final best)."""
    return max(history[: max(k, 1)])


def replay(trials: pd.DataFrame, rule: Rule) -> dict:
    finished: list[list[float]] = []
    epochs_full = epochs_kept = 0
    seconds_full = seconds_kept = 0.0
    pruned_fitness: list[float] = []
    cut: list[bool] = []
    for row in trials.itertuples():
        hs = row.histories
        sec_per_epoch = float(row.seconds) / max(sum(len(h) for h in hs), 1)
        accs, any_cut = [], False
        for h in hs:
            epochs_full += len(h)
            seconds_full += len(h) * sec_per_epoch
            if any_cut and rule.skip_seeds:
                continue
            stop = len(h)
            for k in range(rule.warmup, len(h)):  # decide after epoch k, before epoch k + 1
                ref = [best_so_far(r, k) for r in finished]
                if len(ref) >= rule.min_reference and best_so_far(h, k) < np.percentile(ref, rule.percentile):
                    stop = k
                    break
            epochs_kept += stop
            seconds_kept += stop * sec_per_epoch
            accs.append(best_so_far(h, stop))
            any_cut |= stop < len(h)
        finished.extend(hs)  # the reference: every training run so far, as it ran unpruned
        pruned_fitness.append(1.0 - float(np.mean(accs)))
        cut.append(any_cut)
    trials = trials.assign(pruned_fitness=pruned_fitness, cut=cut)
    order = trials.sort_values("fitness", kind="stable")
    top = order.head(max(len(trials) // 10, 3))
    rank = trials[["fitness", "pruned_fitness"]].rank()
    return {
        "rule": str(rule),
        "epochs_saved_pct": 100.0 * (1 - epochs_kept / epochs_full),
        "time_saved_pct": 100.0 * (1 - seconds_kept / seconds_full) if seconds_full else float("nan"),
        "evaluations_cut": int(trials["cut"].sum()),
        "top_cut": f"{int(top['cut'].sum())}/{len(top)}",
        "best_cut": bool(order.iloc[0]["cut"]),
        "best_after_pruning_is_best": bool(trials["pruned_fitness"].idxmin() == order.index[0]),
        "rank_corr": float(rank["fitness"].corr(rank["pruned_fitness"])),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("trials", type=Path, help="search_trials.parquet of a finished search")
    ap.add_argument("--percentiles", type=float, nargs="+", default=[10, 25, 50])
    ap.add_argument("--warmups", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--min-reference", type=int, default=5)
    ap.add_argument("--out", type=Path, help="write the table as CSV")
    args = ap.parse_args(argv)
    trials = load_trials(args.trials)
    n_units = int(trials["histories"].map(len).sum())
    print(f"{args.trials}: {len(trials)} trained evaluations, {n_units} trainings, "
          f"{int(trials['histories'].map(lambda hs: sum(len(h) for h in hs)).sum())} epochs, "
          f"{float(trials['seconds'].sum()):.0f} s of training")
    rows = [replay(trials, Rule(p, w, args.min_reference, skip))
            for skip in (False, True) for w in args.warmups for p in args.percentiles]
    table = pd.DataFrame(rows)
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(table.to_string(index=False, float_format=lambda x: f"{x:.2f}"))
    print("top_cut: of the search's best 10% evaluations (unpruned fitness), how many the rule would cut.")
    if args.out:
        table.to_csv(args.out, index=False)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    from evotune.errors import script_main

    sys.exit(script_main(main))
