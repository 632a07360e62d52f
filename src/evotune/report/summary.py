"""The per-generation summary of a search (``generation_summary``) and the block-selection shares.

Pure pandas: the search's ``search_population`` and ``search_trials`` tables in, tables out.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

SUMMARY_COLUMNS = [
    "generation",
    "population",
    "best_fitness",
    "mean_fitness",
    "worst_fitness",
    "best_so_far",
    "n_evaluations",
    "n_cached",
    "n_invalid",
    "train_seconds",
    "mean_trained_blocks",
    "best_mask",
    "best_key",
]



def gene_block_names(df: pd.DataFrame) -> list[str]:
    """Block names from the ``gene_<block>`` columns of a trials / population table."""
    return [c[len("gene_"):] for c in df.columns if c.startswith("gene_") and c != "gene_threshold"]




def mask_text(mask: Any) -> str:
    """A mask as a string of 0/1: as stored (``"011111"``), or from a list of 0/1 or booleans."""
    if isinstance(mask, str):
        return mask
    return "".join("1" if int(b) else "0" for b in mask)


def _masks(df: pd.DataFrame, block_names: Sequence[str]) -> list[str]:
    """Per row, the mask (from ``mask``, else from the genes: gene > threshold)."""
    if "mask" in df.columns:
        return [mask_text(m) for m in df["mask"]]
    genes = df[[f"gene_{b}" for b in block_names]].to_numpy(dtype=float)
    thr = df["gene_threshold"].to_numpy(dtype=float)[:, None]
    return ["".join("1" if s else "0" for s in row) for row in genes > thr]


def generation_summary(search_population: pd.DataFrame, search_trials: pd.DataFrame) -> pd.DataFrame:
    """One row per generation of the search.

    From the population after the generation (``search_population``): its size,
    best / mean / worst fitness, the best-so-far fitness (cumulative minimum of
    the best), the mean number of trained blocks and the best individual's mask
    and key. From the evaluations requested in that generation (``search_trials``):
    their number, how many were reused from the study (``n_cached``) or invalid,
    and the training seconds they cost. A generation with trials but no
    population row (a search cut short) takes its fitness columns from its trials.
    """
    pop = search_population if search_population is not None else pd.DataFrame()
    trials = search_trials if search_trials is not None else pd.DataFrame()
    block_names = gene_block_names(pop) or gene_block_names(trials)
    gens: set[int] = set()
    for df in (pop, trials):
        if "generation" in df.columns:
            gens |= set(int(g) for g in df["generation"])
    rows = []
    for g in sorted(gens):
        p = pop[pop["generation"].astype(int) == g] if "generation" in pop.columns else pop.iloc[0:0]
        t = trials[trials["generation"].astype(int) == g] if "generation" in trials.columns else trials.iloc[0:0]
        src = p if len(p) else t
        if "rank" in src.columns:
            src = src.sort_values("rank", kind="stable")
        fit = src["fitness"].astype(float).to_numpy()
        # the population is sorted (rank 0 = best); trials are not
        best_pos = 0 if src is p and "rank" in p.columns else int(np.argmin(fit))
        best_row = src.iloc[best_pos]
        masks = _masks(src, block_names) if (block_names or "mask" in src.columns) else []
        trained_counts = [m.count("1") for m in masks if m]
        n_cached = int(t["cached"].astype(bool).sum()) if "cached" in t.columns else 0
        n_invalid = int((~t["valid"].astype(bool)).sum()) if "valid" in t.columns else 0
        seconds = float(t["seconds"].astype(float).sum()) if "seconds" in t.columns else 0.0
        rows.append(
            {
                "generation": g,
                "population": int(len(p)),
                "best_fitness": float(fit.min()),
                "mean_fitness": float(fit.mean()),
                "worst_fitness": float(fit.max()),
                "n_evaluations": int(len(t)),
                "n_cached": n_cached,
                "n_invalid": n_invalid,
                "train_seconds": seconds,
                "mean_trained_blocks": float(np.mean(trained_counts)) if trained_counts else float("nan"),
                "best_mask": masks[best_pos] if masks else "",
                "best_key": str(best_row.get("key", "")),
            }
        )
    out = pd.DataFrame(rows, columns=[c for c in SUMMARY_COLUMNS if c != "best_so_far"])
    out.insert(SUMMARY_COLUMNS.index("best_so_far"), "best_so_far", out["best_fitness"].cummin())
    return out[SUMMARY_COLUMNS].reset_index(drop=True)


def block_selection_shares(search_population: pd.DataFrame, block_names: Sequence[str]) -> pd.DataFrame:
    """Generations x blocks: the share of the population that trains each block."""
    names = list(block_names)
    masks = _masks(search_population, names)
    bits = np.array([[c == "1" for c in m.ljust(len(names), "0")[: len(names)]] for m in masks], dtype=float)
    df = pd.DataFrame(bits.reshape(len(masks), len(names)), columns=names)
    df["generation"] = search_population["generation"].astype(int).to_numpy()
    return df.groupby("generation")[names].mean().sort_index()


#: columns of :func:`gene_trajectories`
GENE_TRAJECTORY_COLUMNS = ["gene", "generation", "rank", "key", "value", "is_best"]


def gene_trajectories(search_population: pd.DataFrame) -> pd.DataFrame:
    """The genes of the population after every generation, long: one row per gene of each individual.

    ``gene``: the block the gene belongs to (``gene_<block>`` columns, in their order), then
    ``threshold``; rows by gene, generation and rank (0 = best of that generation; from the
    population's ``rank``, else by fitness); ``is_best``: rank 0.
    """
    pop = search_population if search_population is not None else pd.DataFrame()
    names = gene_block_names(pop) + (["threshold"] if "gene_threshold" in pop.columns else [])
    if not len(pop) or not names:
        return pd.DataFrame({"gene": pd.Series(dtype=str), "generation": pd.Series(dtype=int),
                             "rank": pd.Series(dtype=int), "key": pd.Series(dtype=str),
                             "value": pd.Series(dtype=float), "is_best": pd.Series(dtype=bool)})
    df = pop.copy()
    df["generation"] = df["generation"].astype(int)
    if "rank" not in df.columns:
        df["rank"] = df.groupby("generation")["fitness"].rank(method="first").astype(int) - 1
    if "key" not in df.columns:
        df["key"] = ""
    df = df.sort_values(["generation", "rank"], kind="stable")
    long = df.melt(id_vars=["generation", "rank", "key"], value_vars=[f"gene_{n}" for n in names],
                   var_name="gene", value_name="value")
    long["gene"] = long["gene"].str[len("gene_"):]
    long["rank"] = long["rank"].astype(int)
    long["key"] = long["key"].astype(str)
    long["value"] = long["value"].astype(float)
    long["is_best"] = long["rank"] == 0
    return long[GENE_TRAJECTORY_COLUMNS].reset_index(drop=True)


#: columns of :func:`training_history` (``retrain_history``)
TRAINING_HISTORY_COLUMNS = ["seed", "epoch", "train_loss", "val_macro_acc", "is_best", "diverged"]


def training_history(runs: Sequence[Any]) -> pd.DataFrame:
    """The per-epoch history of trainings (:class:`evotune.retraining.TrainedRun`), one row per seed and
    epoch: training loss, validation macro accuracy, whether it is the seed's best epoch (the state kept)
    and whether that seed's training diverged (stopped at a non-finite loss after its last row)."""
    rows = []
    for run in runs:
        for h in run.history:
            epoch = int(h["epoch"])
            rows.append({"seed": int(run.seed), "epoch": epoch, "train_loss": float(h["train_loss"]),
                         "val_macro_acc": float(h["val_macro_acc"]), "is_best": epoch == int(run.best_epoch),
                         "diverged": bool(run.diverged)})
    out = pd.DataFrame(rows, columns=TRAINING_HISTORY_COLUMNS)
    return out.astype({"seed": int, "epoch": int, "train_loss": float, "val_macro_acc": float, "is_best": bool,
                       "diverged": bool})
