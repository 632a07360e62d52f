"""Tables, figures and the markdown report of a BioTune search and its test.

Pure functions (no Kedro): they take the search and test artifacts as plain
pandas tables and dicts and return pandas tables, matplotlib Figures or markdown
text. The Kedro nodes in :mod:`evotune.pipelines.reporting` wire them to the
catalog.

Figures are built on :class:`matplotlib.figure.Figure` directly (no pyplot state,
no GUI backend), so they can be made from any thread and need no closing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from .search.records import GenomeRecord

# File names of the figures next to the report (``figures/<name>``); the report
# links them with these relative paths.
FIGURE_FILES: dict[str, str] = {
    "fitness": "fitness.png",
    "block_selection": "block_selection.png",
    "lr_multipliers": "lr_multipliers.png",
    "confusion_matrix": "confusion_matrix.png",
}
FIGURE_TITLES: dict[str, str] = {
    "fitness": "Fitness per generation",
    "block_selection": "Share of the population training each block",
    "lr_multipliers": "Learning-rate multiplier per block of the best genome",
    "confusion_matrix": "Test confusion matrix",
}

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

# above this many classes the confusion matrix gets no per-cell counts / tick labels
CONFUSION_ANNOTATE_MAX = 12
CONFUSION_TICKS_MAX = 40


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------
def gene_block_names(df: pd.DataFrame) -> list[str]:
    """Block names from the ``gene_<block>`` columns of a trials / population table."""
    return [c[len("gene_"):] for c in df.columns if c.startswith("gene_") and c != "gene_threshold"]


def normalise_mask(mask: Any, n_blocks: int | None = None) -> str:
    """A mask as a string of 0/1, whatever a CSV round trip made of it.

    ``"001111"`` read without ``dtype=str`` comes back as the integer ``1111`` (or
    ``1111.0``); the leading zeros are restored from ``n_blocks``. Missing -> "".
    """
    if mask is None or (isinstance(mask, float) and math.isnan(mask)):
        return ""
    if isinstance(mask, (int, np.integer, float, np.floating)) and not isinstance(mask, bool):
        s = str(int(mask))
    else:
        s = str(mask).strip()
        if s.endswith(".0"):
            s = s[:-2]
    if n_blocks is not None and len(s) < n_blocks:
        s = s.zfill(n_blocks)
    return s


def _masks(df: pd.DataFrame, block_names: Sequence[str]) -> list[str]:
    """Per row, the mask (from ``mask``, else from the genes: gene > threshold)."""
    n = len(block_names)
    if "mask" in df.columns:
        return [normalise_mask(m, n) for m in df["mask"]]
    genes = df[[f"gene_{b}" for b in block_names]].to_numpy(dtype=float)
    thr = df["gene_threshold"].to_numpy(dtype=float)[:, None]
    return ["".join("1" if s else "0" for s in row) for row in genes > thr]


def _fmt_float(x: Any, digits: int = 4) -> str:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return "" if x is None else str(x)
    if math.isnan(v):
        return "-"
    return f"{v:.{digits}f}"


def _pct(x: Any, digits: int = 2) -> str:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return "-"
    return "-" if math.isnan(v) else f"{100.0 * v:.{digits}f}"


def _pm_pct(mean: Any, std: Any) -> str:
    return f"{_pct(mean)} ± {_pct(std)} %"


def format_duration(seconds: Any) -> str:
    """``3723`` -> ``"1h 02m 03s"``, ``125`` -> ``"2m 05s"``, ``4.25`` -> ``"4.2 s"``."""
    try:
        s = float(seconds)
    except (TypeError, ValueError):
        return "-"
    if math.isnan(s):
        return "-"
    if s < 60:
        return f"{s:.1f} s"
    total = int(round(s))
    h, rem = divmod(total, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}h {m:02d}m {sec:02d}s" if h else f"{m}m {sec:02d}s"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], align: str | None = None) -> str:
    """A GitHub-flavoured markdown table (no ``tabulate`` needed).

    ``align``: one character per column, ``l``, ``r`` or ``c`` (default: left).
    Cells are converted with ``str``; ``|`` and newlines in cells are escaped.
    """

    def cell(v: Any) -> str:
        return ("" if v is None else str(v)).replace("|", "\\|").replace("\n", " ")

    align = align or "l" * len(headers)
    if len(align) != len(headers):
        raise ValueError(f"align has {len(align)} characters for {len(headers)} columns")
    marks = {"l": ":--", "r": "--:", "c": ":-:"}
    lines = [
        "| " + " | ".join(cell(h) for h in headers) + " |",
        "| " + " | ".join(marks[a] for a in align) + " |",
    ]
    for row in rows:
        if len(row) != len(headers):
            raise ValueError(f"a row has {len(row)} cells for {len(headers)} columns")
        lines.append("| " + " | ".join(cell(v) for v in row) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------
# tables
# --------------------------------------------------------------------------------------
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


# --------------------------------------------------------------------------------------
# figures
# --------------------------------------------------------------------------------------
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
    title = f"Best genome: learning-rate multiplier per block (base lr {float(best_genome.base_lr):g})"
    ax.set_title(title)
    ax.legend(loc="upper left")
    return fig


def plot_confusion(test_metrics: Mapping[str, Any]) -> Figure:
    """Row-normalised confusion matrix (rows = true class); counts annotated when few classes."""
    conf = np.asarray(test_metrics["confusion_matrix"], dtype=float)
    k = conf.shape[0]
    classes = [str(c) for c in test_metrics.get("classes") or range(k)]
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
    method = test_metrics.get("method", "")
    n_seeds = test_metrics.get("n_seeds")
    extra = f", summed over {n_seeds} seed{'s' if n_seeds != 1 else ''}" if n_seeds else ""
    ax.set_title(f"Test confusion matrix{' - ' + method_label(method) if method else ''}\n"
                 f"(normalised by row{extra})")
    fig.colorbar(im, ax=ax, label="share of the true class")
    return fig


# --------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------
METHOD_LABELS = {"biotune": "BioTune", "deft": "DEFT", "full_ft": "Full fine-tuning", "linear_probe": "Linear probing"}


def method_label(method: Any) -> str:
    """Display name of a method id (``"biotune"`` -> ``"BioTune"``); unknown ids unchanged."""
    return METHOD_LABELS.get(str(method).lower(), str(method))


def _yes_no(b: Any) -> str:
    return "yes" if bool(b) else "no"


def _best_genome_table(best: GenomeRecord) -> str:
    names = list(best.block_names)
    genes = list(best.genes)
    mults = list(best.lr_multipliers)
    trained = [lr is not None for lr in best.block_lrs]
    rows = []
    for i, name in enumerate(names):
        m = mults[i] if i < len(mults) else None
        rows.append(
            [
                name,
                _yes_no(trained[i]),
                _fmt_float(genes[i], 3) if i < len(genes) else "-",
                f"{float(m):.2f}x" if trained[i] and m is not None else "frozen",
            ]
        )
    rows.append(["*threshold*", "", _fmt_float(best.threshold, 3), ""])
    return markdown_table(["block", "trained", "gene", "lr multiplier"], rows, "llrr")


def _generation_table(summary: pd.DataFrame) -> str:
    rows = []
    for _, r in summary.iterrows():
        rows.append(
            [
                int(r["generation"]),
                _fmt_float(r["best_fitness"]),
                _fmt_float(r["mean_fitness"]),
                _fmt_float(r["worst_fitness"]),
                _fmt_float(r["best_so_far"]),
                int(r["n_evaluations"]),
                int(r.get("n_cached", 0)),
                format_duration(r["train_seconds"]),
                _fmt_float(r["mean_trained_blocks"], 2),
                f"`{normalise_mask(r['best_mask'])}`",
                r["best_key"],
            ]
        )
    return markdown_table(
        ["gen", "best", "mean", "worst", "best so far", "evals", "reused", "time", "trained blocks", "best mask", "best key"],
        rows,
        "rrrrrrrrrll",
    )


def _per_seed_table(per_seed: pd.DataFrame) -> str:
    rows = []
    for _, r in per_seed.iterrows():
        rows.append(
            [
                int(r["seed"]),
                _pct(r.get("accuracy")),
                _pct(r.get("macro_accuracy")),
                _pct(r.get("macro_f1")),
                _fmt_float(r.get("cohen_kappa")),
                _pct(r.get("best_val_acc")),
                int(r["epochs_run"]) if "epochs_run" in r and pd.notna(r["epochs_run"]) else "-",
                format_duration(r.get("train_seconds")),
            ]
        )
    return markdown_table(
        ["seed", "accuracy %", "macro acc %", "macro F1 %", "kappa", "best val acc %", "epochs", "train time"],
        rows,
        "rrrrrrrr",
    )


def markdown_report(
    best_genome: GenomeRecord,
    summary: pd.DataFrame,
    test_metrics: Mapping[str, Any],
    test_metrics_per_seed: pd.DataFrame,
    figure_paths: Mapping[str, str],
) -> str:
    """The report a reader opens first (markdown).

    ``figure_paths`` maps a figure name (keys of :data:`FIGURE_FILES`, or any other
    name) to its path relative to the report; the figures are linked in that order.
    """
    tm = test_metrics
    method = str(tm.get("method", "biotune"))
    arch = best_genome.arch
    n_seeds = int(tm.get("n_seeds", len(test_metrics_per_seed)))
    share = tm.get("trainable_share")
    if share is None and tm.get("total_params"):
        share = tm["trainable_params"] / tm["total_params"]
    out: list[str] = [f"# {method_label(method)} on {arch}: results", ""]

    # headline
    n_img = tm.get("n_test_images")
    out.append(
        f"**Test accuracy {_pm_pct(tm.get('accuracy_mean'), tm.get('accuracy_std'))}** "
        f"(mean ± std over {n_seeds} seed{'s' if n_seeds != 1 else ''}"
        + (f", {int(n_img):,} test images" if n_img is not None else "")
        + ")."
    )
    out.append("")
    if tm.get("dataset"):
        created = tm.get("inputs_created") or {}
        out.append(
            f"Data: {tm.get('dataset_name', '?')} (split fingerprint `{tm['dataset']}`); backbone `{tm.get('backbone_id')}`"
            f" made {created.get('backbone', '?')}; search `{best_genome.study_name}` made "
            f"{best_genome.created}; retrain made {created.get('retrained_models', '?')}."
        )
        out.append("")
    headline = [
        ["test accuracy", _pm_pct(tm.get("accuracy_mean"), tm.get("accuracy_std"))],
        ["test macro accuracy", _pm_pct(tm.get("macro_accuracy_mean"), tm.get("macro_accuracy_std"))],
        ["test macro F1", _pm_pct(tm.get("macro_f1_mean"), tm.get("macro_f1_std"))],
        ["Cohen's kappa", f"{_fmt_float(tm.get('cohen_kappa_mean'))} ± {_fmt_float(tm.get('cohen_kappa_std'))}"],
        [
            "trainable parameters",
            f"{_pct(share)} % ({int(tm.get('trainable_params', 0)):,} of {int(tm.get('total_params', 0)):,})"
            if share is not None
            else "-",
        ],
    ]
    out.append(markdown_table(["metric", "value"], headline, "lr"))
    out.append("")

    # best genome
    fitness = best_genome.fitness
    out.append("## Best genome")
    out.append("")
    out.append(
        f"Genome `{best_genome.key}`, mask `{best_genome.mask}` "
        f"(1 = trained), fitness {_fmt_float(fitness)}"
        + f" (validation macro accuracy {_pct(1.0 - float(fitness))} % during the search)"
        + f". Base learning rate {best_genome.base_lr}; a trained block's rate is "
        "base_lr * 10^(2 (gene - 0.5)); the head is "
        + ("always trained." if best_genome.force_head_trainable else "trained only when selected.")
    )
    out.append("")
    out.append(_best_genome_table(best_genome))
    out.append("")

    # search settings and cost
    gens = summary["generation"].astype(int) if len(summary) else pd.Series(dtype=int)
    n_generations = int(gens.max()) if len(gens) else 0
    pop0 = summary.loc[gens == 0, "population"] if "population" in summary.columns and len(summary) else []
    out.append("## Search settings and cost")
    out.append("")
    settings = [
        ["architecture", arch],
        ["blocks", len(best_genome.block_names)],
        ["generations", f"{n_generations} (after the initial population)"],
    ]
    if len(pop0):
        settings.append(["population", int(pop0.iloc[0])])
    settings += [
        ["evaluations", best_genome.evaluations],
        ["trainings (evaluations x seeds, reused ones excluded)", best_genome.trainings],
        ["evaluations reused from the study", int(summary["n_cached"].sum()) if "n_cached" in summary.columns else 0],
        ["search time (sum over evaluations)", format_duration(best_genome.search_seconds)],
        ["search device", best_genome.device],
        ["study", f"`{best_genome.study_name}` in `{best_genome.storage}`"],
        ["test device", tm.get("device", "-")],
    ]
    out.append(markdown_table(["setting", "value"], settings, "ll"))
    out.append("")

    # per generation
    out.append("## Search progress per generation")
    out.append("")
    out.append("Fitness = 1 - mean validation macro accuracy over the search seeds (lower is better); "
               "statistics over the population after each generation.")
    out.append("")
    out.append(_generation_table(summary))
    out.append("")

    # per seed
    out.append("## Test results per seed")
    out.append("")
    out.append(_per_seed_table(test_metrics_per_seed))
    out.append("")

    # figures
    if figure_paths:
        out.append("## Figures")
        out.append("")
        for name, path in figure_paths.items():
            title = FIGURE_TITLES.get(name, name)
            out.append(f"- [{title}]({path})")
        out.append("")
        for name, path in figure_paths.items():
            out.append(f"![{FIGURE_TITLES.get(name, name)}]({path})")
            out.append("")
    return "\n".join(out).rstrip() + "\n"
