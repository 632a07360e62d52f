"""The accuracy-versus-cost front of a search (docs/method/pareto.md).

Every evaluation of a search has a validation macro accuracy (``1 - fitness``, on its search
chunk, mean over the search seeds), the trainable-parameter share of its genome (its mask after
the head policy: :func:`evotune.methods.mask_share`, the share the comparison reports) and its
training time (``seconds``, summed over the seeds). An evaluation is on the front when no other
evaluation is at least as good on both criteria and better on one:

* the *share front*: validation accuracy (up) against trainable share (down);
* the *time front*: validation accuracy (up) against training seconds (down).

:func:`front_table` makes one row per valid evaluation with both flags and the chosen genome
marked; :func:`plot_front` draws both fronts; :func:`front_markdown` the table of the front's
genomes; :func:`record_front_study` writes the same points as a three-objective Optuna study
(``<search study>-front``) beside the search's own study, so that optuna-dashboard's Pareto-front
view shows them.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Sequence

import numpy as np
import optuna
import pandas as pd
from matplotlib.figure import Figure
from optuna.study import StudyDirection

from ..genome import WORST_FITNESS
from ..methods import mask_share
from ..search.store import make_storage

log = logging.getLogger(__name__)

#: the objectives of the front study, in order, with their directions
FRONT_OBJECTIVES = ("val macro acc", "trainable share", "training seconds")
FRONT_DIRECTIONS: tuple[StudyDirection, ...] = (StudyDirection.MAXIMIZE, StudyDirection.MINIMIZE,
                                               StudyDirection.MINIMIZE)
FRONT_SUFFIX = "-front"
FRONT_DESCRIPTION = (
    "The accuracy-versus-cost front of the search study of the same name without '-front': one trial per valid "
    "evaluation, its three objectives the validation macro accuracy on its search chunk (1 - fitness), the "
    "trainable-parameter share of its genome and its training seconds (summed over seeds). Parameters: the genes. "
    "User attributes: key, mask, generation, chunk, chosen (the genome the run picked). Written by the reporting "
    "pipeline (node pareto_front) from search_trials; the search study itself is unchanged."
)

FRONT_COLUMNS = ["key", "generation", "role", "chunk", "mask", "val_acc", "trainable_share", "seconds",
                 "on_share_front", "on_time_front", "chosen"]


def pareto_mask(values: np.ndarray, maximize: Sequence[bool]) -> np.ndarray:
    """Whether each row of ``values`` (n points x k criteria) is non-dominated: no other row at least as good
    on every criterion and strictly better on one (``maximize[j]``: criterion j is better higher).
    Identical points are all kept."""
    v = np.asarray(values, dtype=float)
    if v.ndim != 2 or v.shape[1] != len(maximize):
        raise ValueError(f"pareto_mask: {v.shape} values for {len(maximize)} criteria")
    v = np.where(np.asarray(maximize, dtype=bool), -v, v)  # every criterion: lower is better
    keep = np.ones(len(v), dtype=bool)
    for i in range(len(v)):
        no_worse = np.all(v <= v[i], axis=1)
        better = np.any(v < v[i], axis=1)
        keep[i] = not np.any(no_worse & better)
    return keep


def front_table(trials: pd.DataFrame, block_params: Sequence[int], total_params: int, chosen_key: str | None
                ) -> pd.DataFrame:
    """One row per valid, non-diverged evaluation of ``trials`` (a search's trials table): its validation
    accuracy, trainable share and training seconds, whether it is on the share front and on the time front,
    and whether it is the evaluation that found the chosen genome (``chosen_key``). Sorted by share, then
    accuracy (best first)."""
    missing = [c for c in ("key", "fitness", "mask", "seconds") if c not in trials.columns]
    if missing:
        raise ValueError(f"pareto front: the search trials have no column(s) {missing}")
    ok = trials["fitness"].astype(float) < WORST_FITNESS
    for col in ("valid",):
        if col in trials.columns:
            ok &= trials[col].astype(bool)
    if "diverged" in trials.columns:
        ok &= ~trials["diverged"].astype(bool)
    t = trials[ok]
    out = pd.DataFrame({
        "key": t["key"].astype(str),
        "generation": t["generation"].astype(int) if "generation" in t else 0,
        "role": t["role"].astype(str) if "role" in t else "",
        "chunk": t["chunk"].astype(int) if "chunk" in t else 0,
        "mask": t["mask"].astype(str),
        "val_acc": 1.0 - t["fitness"].astype(float),
        "trainable_share": [mask_share(m, block_params, total_params) for m in t["mask"].astype(str)],
        "seconds": t["seconds"].astype(float),
    }).reset_index(drop=True)
    genes = [c for c in trials.columns if c.startswith("gene_")]
    if len(out):
        out["on_share_front"] = pareto_mask(out[["val_acc", "trainable_share"]].to_numpy(), (True, False))
        out["on_time_front"] = pareto_mask(out[["val_acc", "seconds"]].to_numpy(), (True, False))
    else:
        out["on_share_front"], out["on_time_front"] = pd.Series(dtype=bool), pd.Series(dtype=bool)
    out["chosen"] = out["key"] == (chosen_key or "")
    for c in genes:
        out[c] = t[c].astype(float).to_numpy()
    return out.sort_values(["trainable_share", "val_acc"], ascending=[True, False], kind="stable"
                           ).reset_index(drop=True)


def front_rows(table: pd.DataFrame) -> pd.DataFrame:
    """The genomes on either front (and the chosen one), by trainable share."""
    return table[table["on_share_front"] | table["on_time_front"] | table["chosen"]]


def front_markdown(table: pd.DataFrame) -> str:
    """The front's genomes as a markdown table."""
    from .markdown import markdown_table

    rows = [[f"`{r.key}`", f"`{r.mask}`", f"{100 * r.val_acc:.2f}", f"{100 * r.trainable_share:.1f}",
             f"{r.seconds:.1f}", "yes" if r.on_share_front else "", "yes" if r.on_time_front else "",
             "**chosen**" if r.chosen else ""]
            for r in front_rows(table).itertuples()]
    return markdown_table(["evaluation", "mask", "val macro acc (%)", "trainable (%)", "training (s)",
                           "share front", "time front", ""], rows)


def plot_front(table: pd.DataFrame, title: str = "Accuracy vs cost of every evaluated genome") -> Figure:
    """Two panels: validation accuracy against trainable share and against training time; every evaluation a
    dot, the front a step line through its points, the chosen genome a star."""
    fig = Figure(figsize=(11, 4.4), layout="constrained")
    panels = (("trainable_share", "on_share_front", "trainable parameters (% of the model)", 100.0),
              ("seconds", "on_time_front", "training time (s, summed over seeds)", 1.0))
    for n, (x, flag, label, scale) in enumerate(panels):
        ax = fig.add_subplot(1, 2, n + 1)
        ax.scatter(scale * table[x], 100 * table["val_acc"], s=14, color="0.65", label="evaluations")
        front = table[table[flag]].sort_values(x)
        ax.plot(scale * front[x], 100 * front["val_acc"], marker="o", ms=5, color="tab:blue",
                drawstyle="steps-post", label="Pareto front")
        chosen = table[table["chosen"]]
        if len(chosen):
            ax.scatter(scale * chosen[x], 100 * chosen["val_acc"], marker="*", s=220, color="tab:red",
                       zorder=5, label="chosen genome")
        ax.set_xlabel(label)
        ax.set_ylabel("validation macro accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    fig.suptitle(title)
    return fig


def front_study_name(search_study_name: str) -> str:
    return f"{search_study_name}{FRONT_SUFFIX}"


def record_front_study(storage: str | None, search_study_name: str, table: pd.DataFrame) -> str | None:
    """Write ``table`` (:func:`front_table`) as the three-objective study ``<search study>-front`` in
    ``storage``, for optuna-dashboard's Pareto view; rewritten when its trials differ. Returns its name
    (None with an in-memory storage: nothing outlives the run, so nothing is written)."""
    if not storage:
        log.info("pareto front: the study storage is in memory; no front study written")
        return None
    name = front_study_name(search_study_name)
    store = make_storage(storage)
    assert store is not None  # a storage URL (checked above) makes a storage
    keys = sorted(table["key"].astype(str))
    try:
        old = optuna.load_study(study_name=name, storage=store)
        if sorted(t.user_attrs.get("key", "") for t in old.get_trials(deepcopy=False)) == keys:
            chosen = [t.user_attrs.get("key") for t in old.get_trials(deepcopy=False) if t.user_attrs.get("chosen")]
            if chosen == list(table.loc[table["chosen"], "key"]):
                return name
        optuna.delete_study(study_name=name, storage=store)
    except KeyError:  # no such study yet
        pass
    study = optuna.create_study(storage=store, study_name=name, directions=list(FRONT_DIRECTIONS))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(list(FRONT_OBJECTIVES))
    study.set_user_attr("description", FRONT_DESCRIPTION)
    study.set_user_attr("search_study", search_study_name)
    genes = [c for c in table.columns if c.startswith("gene_")]
    dist = optuna.distributions.FloatDistribution(0.0, 1.0)
    trials = []
    for r in table.to_dict("records"):
        values = [float(r["val_acc"]), float(r["trainable_share"]), float(r["seconds"])]
        if not all(math.isfinite(v) for v in values):
            continue
        trials.append(optuna.trial.create_trial(
            values=values, params={g: float(r[g]) for g in genes}, distributions={g: dist for g in genes},
            user_attrs={"key": str(r["key"]), "mask": str(r["mask"]), "generation": int(r["generation"]),
                        "chunk": int(r["chunk"]), "chosen": bool(r["chosen"])}))
    study.add_trials(trials)
    log.info("pareto front: %d evaluations written to the study %s (%d on the share front)", len(trials), name,
             int(table["on_share_front"].sum()) if len(table) else 0)
    return name
