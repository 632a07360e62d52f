"""The figures of the report: fitness per generation, block selection, each gene over the
generations, the best genome's learning rates, the training curves of its retraining, the
test confusion matrix, the search fidelity.

Figures are built on :class:`matplotlib.figure.Figure` directly (no pyplot state,
no GUI backend), so they can be made from any thread and need no closing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ..evaluation import TestMetrics
from ..fidelity import FidelitySummary
from ..search.records import GenomeRecord
from .labels import method_label
from .summary import block_selection_shares, gene_trajectories

# above this many classes the confusion matrix gets no per-cell counts / tick labels
CONFUSION_ANNOTATE_MAX = 12
CONFUSION_TICKS_MAX = 40


def plot_fitness(summary: pd.DataFrame) -> Figure:
    """Best, mean and best-so-far fitness per generation (band: best to worst)."""
    fig = Figure(figsize=(7, 4.2), layout="constrained")
    ax = fig.add_subplot()
    g = summary["generation"].astype(int).to_numpy()
    ax.fill_between(
        g, summary["best_fitness"].astype(float), summary["worst_fitness"].astype(float),
        color="tab:blue", alpha=0.12, label="population range",
    )
    ax.plot(g, summary["best_fitness"], marker="o", color="tab:blue", label="best")
    ax.plot(g, summary["mean_fitness"], marker="s", color="tab:orange", label="mean")
    ax.plot(g, summary["best_so_far"], ls="--", drawstyle="steps-post", color="tab:green", label="best so far")
    ax.set_xticks(g)
    ax.set_xlabel("generation (0 = initial population)")
    ax.set_ylabel("fitness = 1 - val macro accuracy (lower is better)")
    ax.set_title("Search progress: fitness per generation")
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


def plot_block_selection(search_population: pd.DataFrame, block_names: Sequence[str]) -> Figure:
    """Heatmap generations x blocks of the share of the population training each block."""
    shares = block_selection_shares(search_population, block_names)
    n_gen, n_blocks = shares.shape
    fig = Figure(figsize=(max(5.0, 0.9 * n_blocks + 2.5), max(3.0, 0.45 * n_gen + 2.0)), layout="constrained")
    ax = fig.add_subplot()
    im = ax.imshow(shares.to_numpy(), cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    for i in range(n_gen):
        for j in range(n_blocks):
            v = float(shares.iat[i, j])
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=8,
                    color="black" if v > 0.6 else "white")
    ax.set_xticks(range(n_blocks), labels=list(shares.columns), rotation=45, ha="right")
    ax.set_yticks(range(n_gen), labels=[str(g) for g in shares.index])
    ax.set_xlabel("block")
    ax.set_ylabel("generation")
    ax.set_title("Block selection: share of the population training each block")
    fig.colorbar(im, ax=ax, label="share of the population")
    return fig


def plot_gene_trajectories(search_population: pd.DataFrame, best_genome: GenomeRecord) -> Figure:
    """One panel per gene (named after its block) and the threshold: the value of every individual of the
    population after each generation (grey points), the best of each generation (blue line), its threshold
    in the gene panels (a block is trained when its gene is above it) and the best genome (star)."""
    table = gene_trajectories(search_population)
    genes = list(dict.fromkeys(table["gene"]))
    n = max(len(genes), 1)
    ncols = min(4, n)
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(3.3 * ncols, 2.5 * nrows + 0.8), layout="constrained")
    if table.empty:
        ax = fig.add_subplot()
        ax.set_axis_off()
        ax.text(0.5, 0.5, "No population recorded by the search", ha="center", va="center")
        return fig
    axes = fig.subplots(nrows, ncols, sharex=True, sharey=True, squeeze=False).ravel()
    thr = table[table["gene"] == "threshold"]
    best_thr = thr[thr["is_best"]].set_index("generation")["value"] if len(thr) else None
    gens = sorted(set(int(g) for g in table["generation"]))
    for ax, gene in zip(axes, genes):
        part = table[table["gene"] == gene]
        size = part.groupby("generation")["rank"].transform("max").clip(lower=1)
        x = part["generation"] + 0.3 * (part["rank"] / size - 0.5)  # the population spread out, best left
        ax.scatter(x, part["value"], s=12, color="0.55", alpha=0.7, lw=0, label="population")
        best = part[part["is_best"]]
        ax.plot(best["generation"], best["value"], marker="o", ms=4, color="tab:blue", label="best of the generation")
        if gene != "threshold" and best_thr is not None:
            ax.plot(best_thr.index, best_thr.to_numpy(), ls="--", lw=1, color="tab:red",
                    label="its threshold (above: trained)")
        star = part[part["key"] == best_genome.key]
        if len(star):
            ax.scatter(star["generation"], star["value"], marker="*", s=110, facecolor="none",
                       edgecolor="black", lw=1, zorder=3, label=f"best genome ({best_genome.key})")
        ax.set_title(gene if gene != "threshold" else "threshold", fontsize=10)
        ax.set_ylim(-0.03, 1.03)
        ax.set_xticks(gens)
        ax.grid(alpha=0.3)
    for ax in axes[len(genes):]:
        ax.set_axis_off()
    for ax in axes[::ncols]:
        ax.set_ylabel("gene value")
    for ax in axes[(nrows - 1) * ncols:]:
        ax.set_xlabel("generation")
    handles, names = [], []
    for ax in axes[:len(genes)]:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in names:
                handles.append(h)
                names.append(lab)
    fig.legend(handles, names, loc="outside lower center", ncols=min(4, len(names)), fontsize=8)
    fig.suptitle("Genes per generation (population after each generation; a trained block's lr is "
                 "base lr x 10^(2 (gene - 0.5)))", fontsize=10)
    return fig


def plot_lr_multipliers(best_genome: GenomeRecord) -> Figure:
    """Bar chart (log y) of lr / base lr per block of the best genome; frozen blocks marked."""
    names = list(best_genome.block_names)
    n = len(names)
    mults = [float(m) if m is not None else 0.0 for m in best_genome.lr_multipliers]
    trained = [lr is not None for lr in best_genome.block_lrs]
    idx = [i for i in range(n) if trained[i] and mults[i] > 0]
    fig = Figure(figsize=(max(5.0, 0.8 * n + 2.0), 4.2), layout="constrained")
    ax = fig.add_subplot()
    ax.set_yscale("log")
    lo = min([0.05] + [mults[i] / 2 for i in idx])
    hi = max([20.0] + [mults[i] * 2 for i in idx])
    ax.set_ylim(lo, hi)
    bars = ax.bar(idx, [mults[i] for i in idx], color="tab:blue", width=0.7, label="trained")
    for b, i in zip(bars, idx):
        ax.text(b.get_x() + b.get_width() / 2, mults[i] * 1.08, f"{mults[i]:.2f}x",
                ha="center", va="bottom", fontsize=8)
    for i in range(n):
        if i not in idx:
            ax.text(i, lo * 1.3, "frozen", rotation=90, ha="center", va="bottom", color="0.35", fontsize=9)
    ax.axhline(1.0, color="0.4", ls="--", lw=1, label="base lr")
    ax.set_xlim(-0.6, n - 0.4)
    ax.set_xticks(range(n), labels=names, rotation=45, ha="right")
    ax.set_xlabel("block")
    ax.set_ylabel("lr / base lr (log scale)")
    ax.set_title(f"Best genome: learning-rate multiplier per block (base lr {float(best_genome.base_lr):g})")
    ax.legend(loc="upper left")
    return fig


def plot_training_curves(history: pd.DataFrame, best_genome: GenomeRecord) -> Figure:
    """The retraining of the best genome, one line per seed: training loss and validation macro accuracy
    per epoch, each seed's best epoch (the state kept) marked."""
    fig = Figure(figsize=(10, 4.0), layout="constrained")
    loss_ax, acc_ax = fig.subplots(1, 2, sharex=True)
    seeds = list(dict.fromkeys(int(s) for s in history["seed"])) if len(history) else []
    for i, seed in enumerate(seeds):
        part = history[history["seed"] == seed].sort_values("epoch")
        color = f"C{i % 10}"
        diverged = " (diverged)" if part["diverged"].astype(bool).any() else ""
        loss_ax.plot(part["epoch"], part["train_loss"], marker=".", color=color, label=f"seed {seed}{diverged}")
        acc_ax.plot(part["epoch"], 100 * part["val_macro_acc"], marker=".", color=color, label=f"seed {seed}{diverged}")
        best = part[part["is_best"].astype(bool)]
        if len(best):
            loss_ax.scatter(best["epoch"], best["train_loss"], marker="*", s=140, color=color, edgecolor="black",
                            lw=0.6, zorder=3)
            acc_ax.scatter(best["epoch"], 100 * best["val_macro_acc"], marker="*", s=140, color=color,
                           edgecolor="black", lw=0.6, zorder=3)
    if not seeds:
        acc_ax.text(0.5, 0.5, "no epoch recorded", ha="center", va="center", transform=acc_ax.transAxes)
    loss_ax.set_ylabel("training loss")
    acc_ax.set_ylabel("validation macro accuracy (%)")
    for ax in (loss_ax, acc_ax):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    if seeds:
        acc_ax.scatter([], [], marker="*", s=140, color="white", edgecolor="black", lw=0.6, label="best epoch (kept)")
        acc_ax.legend(loc="best", fontsize=8)
    fig.suptitle(f"Retraining of the best genome {best_genome.key} (mask {best_genome.mask}), "
                 f"{len(seeds)} seed{'s' if len(seeds) != 1 else ''}", fontsize=10)
    return fig


def plot_confusion(test_metrics: TestMetrics) -> Figure:
    """Row-normalised confusion matrix (rows = true class); counts annotated when few classes."""
    conf = np.asarray(test_metrics.confusion_matrix, dtype=float)
    k = conf.shape[0]
    classes = [str(c) for c in test_metrics.classes or range(k)]
    support = conf.sum(axis=1, keepdims=True)
    norm = np.divide(conf, support, out=np.zeros_like(conf), where=support > 0)
    side = min(14.0, max(4.5, 0.45 * k + 2.5))
    fig = Figure(figsize=(side + 1.2, side), layout="constrained")
    ax = fig.add_subplot()
    im = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0)
    if k <= CONFUSION_ANNOTATE_MAX:
        for i in range(k):
            for j in range(k):
                ax.text(j, i, f"{int(conf[i, j])}", ha="center", va="center", fontsize=8,
                        color="white" if norm[i, j] > 0.5 else "black")
    if k <= CONFUSION_TICKS_MAX:
        ax.set_xticks(range(k), labels=classes, rotation=45, ha="right")
        ax.set_yticks(range(k), labels=classes)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    method = test_metrics.method
    n_seeds = test_metrics.n_seeds
    extra = f", summed over {n_seeds} seed{'s' if n_seeds != 1 else ''}" if n_seeds else ""
    ax.set_title(f"Test confusion matrix{' - ' + method_label(method) if method else ''}\n"
                 f"(normalised by row{extra})")
    fig.colorbar(im, ax=ax, label="share of the true class")
    return fig


def fidelity_title(summary: FidelitySummary) -> str:
    """``Spearman rho = 0.52 [0.10, 0.85] (95 % CI), n = 15`` (or why there is no number)."""
    if not summary.enabled:
        return "search fidelity not measured (fidelity.enabled: false)"
    if summary.rho is None:
        return f"Spearman rho not defined (n = {summary.n})"
    ci = ("" if summary.ci_low is None else
          f" [{summary.ci_low:.2f}, {summary.ci_high:.2f}] ({100 * summary.confidence:.0f} % CI)")
    return f"Spearman rho = {summary.rho:.2f}{ci}, n = {summary.n}"


def plot_search_fidelity(table: pd.DataFrame, summary: FidelitySummary) -> Figure:
    """Validation score of the search (x) against test macro accuracy after retraining (y), one point per
    genome (final population, random genomes, the best genome starred); rho and its interval in the title.
    Switched off: a figure that says so (no stale figure is left beside the report)."""
    fig = Figure(figsize=(6.4, 4.8), layout="constrained")
    ax = fig.add_subplot()
    if not summary.enabled:
        ax.set_axis_off()
        ax.text(0.5, 0.5, "Search fidelity was switched off\n(fidelity.enabled: false)", ha="center", va="center")
        return fig
    rows = table[table["included"].astype(bool)] if len(table) else table
    styles = {"final_population": ("o", "tab:blue", "final population"), "random": ("s", "tab:orange", "random genome")}
    for origin, (marker, color, label) in styles.items():
        part = rows[rows["origin"] == origin] if len(rows) else rows
        if len(part):
            ax.scatter(100 * part["val_score"].astype(float), 100 * part["test_macro_acc_mean"].astype(float),
                       marker=marker, color=color, alpha=0.8, label=f"{label} ({len(part)})")
    best = rows[rows["is_best"].astype(bool)] if len(rows) else rows
    if len(best):
        ax.scatter(100 * best["val_score"].astype(float), 100 * best["test_macro_acc_mean"].astype(float), marker="*",
                   s=260, facecolor="none", edgecolor="black", linewidth=1.2, label="best genome")
    ax.set_xlabel("search score: validation macro accuracy (%) = 100 (1 - fitness)")
    ax.set_ylabel(f"test macro accuracy (%), mean over {len(summary.seeds)} seed(s)")
    ax.set_title(f"Search fidelity: {fidelity_title(summary)}")
    ax.grid(alpha=0.3)
    if len(rows):
        ax.legend(loc="best", fontsize=8)
    return fig
