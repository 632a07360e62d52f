"""What a search is worth per training: each search method's test accuracy at several budgets (issue 27).

For a search method and a fraction ``b`` of BioTune's evaluations (``compare.budgets``), the genome
the search would have returned had it stopped after ``ceil(b x evaluations)`` evaluations is its
best-so-far genome there (lowest fitness among the evaluations made so far, the earliest on ties).
It is retrained and tested exactly as the method's final genome (the compare pipeline's node
``compare.<method>.budget``); at 100 %, or where the best-so-far genome is already the final one,
the method's own test is reused. :func:`budget_table` gives, per method and budget, the mean over
the resamplings of the mean over seeds of the test macro accuracy with its 95 % t-interval and the
trainings spent (search trainings so far plus the retraining), full fine-tuning being the budget-1
reference; :func:`budget_figure` draws accuracy against trainings.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ..genome import WORST_FITNESS
from .labels import method_label
from .significance import t_interval

#: the columns of a method's ``budget_metrics`` (one row per resampling and budget)
BUDGET_COLUMNS = ["method", "resampling", "budget", "evaluations", "search_trainings", "trainings", "key", "mask",
                  "retrained", "seeds", "macro_accuracy", "macro_accuracy_mean"]


def budget_evaluations(total: int, fraction: float) -> int:
    """The evaluations a search has made at ``fraction`` of a budget of ``total`` (at least one)."""
    return max(1, min(int(total), math.ceil(float(fraction) * int(total) - 1e-9)))


def in_request_order(trials: pd.DataFrame) -> pd.DataFrame:
    """A search's trials of one resampling in the order they were asked for: by ``index`` (the search
    baselines'), else by ``generation`` (BioTune's, whose table is in request order within a generation)."""
    key = "index" if "index" in trials.columns else "generation" if "generation" in trials.columns else None
    return trials.sort_values(key, kind="stable").reset_index(drop=True) if key else trials.reset_index(drop=True)


def best_so_far(trials: pd.DataFrame, n: int) -> dict | None:
    """The best of the first ``n`` evaluations (``trials`` in request order): the lowest fitness, the earliest on
    ties; None when none of them trained anything."""
    first = trials.iloc[:n]
    fit = first["fitness"].astype(float).to_numpy()
    if not len(fit) or fit.min() >= WORST_FITNESS:
        return None
    return first.iloc[int(fit.argmin())].to_dict()


def search_trainings(trials: pd.DataFrame, n: int, seeds: int) -> int:
    """The trainings of the first ``n`` evaluations: ``seeds`` per evaluation that trained (a valid genome)."""
    first = trials.iloc[:n]
    valid = first["valid"].astype(bool) if "valid" in first.columns else first["fitness"].astype(float) < WORST_FITNESS
    return int(valid.sum()) * int(seeds)


def budget_table(rows: pd.DataFrame, reference: dict | None = None) -> pd.DataFrame:
    """Per method (in the order of ``rows``) and budget: the test macro accuracy over the resamplings (mean of
    the per-resampling means over seeds, 95 % t-interval), the mean trainings and evaluations; ``reference``
    (``{"method", "scores": {r: score}, "trainings"}``: full fine-tuning) is the budget-1 row."""
    out = []
    for method in dict.fromkeys(rows["method"]):
        m = rows[rows["method"] == method]
        for b in sorted(set(m["budget"].astype(float))):
            at = m[m["budget"].astype(float) == b].sort_values("resampling")
            iv = t_interval(at["macro_accuracy_mean"].astype(float))
            out.append({"method": method, "budget": b, "evaluations": float(at["evaluations"].mean()),
                        "trainings": float(at["trainings"].mean()), "macro_accuracy_mean": iv.mean,
                        "ci_low": iv.low, "ci_high": iv.high, "n_resamplings": iv.n,
                        "retrained": int(at["retrained"].astype(bool).sum())})
    if reference is not None:
        scores = [float(v) for _, v in sorted(reference["scores"].items())]
        iv = t_interval(scores)
        out.append({"method": reference["method"], "budget": float("nan"), "evaluations": 1.0,
                    "trainings": float(reference["trainings"]), "macro_accuracy_mean": iv.mean, "ci_low": iv.low,
                    "ci_high": iv.high, "n_resamplings": iv.n, "retrained": 0})
    return pd.DataFrame(out)


def budget_markdown(table: pd.DataFrame) -> str:
    """The budget table as markdown: one row per method and budget."""
    from .markdown import markdown_table

    rows = []
    for r in table.itertuples():
        ci = "" if math.isnan(r.ci_low) else f" [{100 * r.ci_low:.2f}, {100 * r.ci_high:.2f}]"
        budget = "reference (1 training per seed)" if math.isnan(r.budget) else f"{100 * r.budget:.0f} %"
        rows.append([method_label(r.method), budget, f"{r.evaluations:.0f}", f"{r.trainings:.0f}",
                     f"{100 * r.macro_accuracy_mean:.2f}{ci}", int(r.n_resamplings)])
    return markdown_table(["method", "budget (of BioTune's evaluations)", "evaluations", "trainings",
                           "test macro acc (%, 95 % CI)", "R"], rows)


def budget_figure(table: pd.DataFrame, markers: Sequence[str] = ("o", "s", "^", "D", "v", "P")) -> Figure:
    """Test macro accuracy against trainings (log x): one line per search method through its budgets, error
    bars the 95 % CI over the resamplings; the budget-1 reference as a star."""
    fig = Figure(figsize=(8, 4.6), layout="constrained")
    ax = fig.add_subplot()
    for i, method in enumerate(dict.fromkeys(table["method"])):
        m = table[table["method"] == method].sort_values("trainings")
        x, y = m["trainings"].to_numpy(float), 100 * m["macro_accuracy_mean"].to_numpy(float)
        low, high = 100 * m["ci_low"].to_numpy(float), 100 * m["ci_high"].to_numpy(float)
        yerr = None if np.isnan(low).all() else np.vstack([y - low, high - y])
        ref = m["budget"].isna().all()
        ax.errorbar(x, y, yerr=yerr, fmt="*" if ref else f"-{markers[i % len(markers)]}", ms=12 if ref else 6,
                    capsize=3, label=method_label(method))
    ax.set_xscale("log")
    ax.set_xlabel("trainings (search so far + retraining, mean over resamplings; log scale)")
    ax.set_ylabel("test macro accuracy (%)")
    ax.set_title("What a search is worth per training: best-so-far genome at 25 / 50 / 100 % of the budget")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return fig
