"""Nodes of the reporting pipeline (thin wrappers over :mod:`evotune.reporting`)."""

from __future__ import annotations

import logging

import pandas as pd
from matplotlib.figure import Figure

from ... import reporting as R
from ...lineage import check_same_lineage
from ...search.records import GenomeRecord

log = logging.getLogger(__name__)

# The report's links are relative to the non-versioned copy of the report
# (catalog ``report_latest``: data/08_reporting/latest/report.md); its figures are
# saved beside it by ``report_figures_latest`` (data/08_reporting/latest/figures/).
FIGURES_DIR = "figures"


def summarise_generations(search_population: pd.DataFrame, search_trials: pd.DataFrame) -> pd.DataFrame:
    """Per generation: best / mean / worst / best-so-far fitness, evaluations, cost, best mask."""
    summary = R.generation_summary(search_population, search_trials)
    if len(summary):
        last = summary.iloc[-1]
        log.info("search: %d generation(s) after the initial population, best fitness %.4f (%s)",
                 int(last["generation"]), float(last["best_so_far"]), last["best_key"])
    return summary


def plot_search_figures(
    generation_summary: pd.DataFrame, search_population: pd.DataFrame, best_genome: GenomeRecord
) -> tuple[Figure, Figure, Figure]:
    """Fitness per generation, block-selection heatmap, best genome's lr multipliers."""
    return (
        R.plot_fitness(generation_summary),
        R.plot_block_selection(search_population, best_genome.block_names),
        R.plot_lr_multipliers(best_genome),
    )


def plot_confusion_matrix(test_metrics: dict) -> Figure:
    """The test confusion matrix (summed over seeds), normalised by row."""
    return R.plot_confusion(test_metrics)


def report_figures(
    generation_summary: pd.DataFrame, search_population: pd.DataFrame, best_genome: GenomeRecord, test_metrics: dict
) -> dict[str, Figure]:
    """All figures of the report, keyed by their file name under ``figures/``."""
    fitness, blocks, lrs = plot_search_figures(generation_summary, search_population, best_genome)
    figs = {"fitness": fitness, "block_selection": blocks, "lr_multipliers": lrs,
            "confusion_matrix": plot_confusion_matrix(test_metrics)}
    return {R.FIGURE_FILES[name]: fig for name, fig in figs.items()}


def write_report(
    best_genome: GenomeRecord,
    generation_summary: pd.DataFrame,
    search_population: pd.DataFrame,
    test_metrics: dict,
    test_metrics_per_seed: pd.DataFrame,
) -> tuple[str, str, dict[str, Figure]]:
    """The markdown report, twice (versioned archive and the ``latest`` copy), and its figures.

    The versioned figures of ``plot_search_figures`` / ``plot_confusion_matrix``
    live under timestamped folders the report cannot know, so this node redraws the
    same figures (cheap) as a non-versioned set beside the ``latest`` report, where
    its relative links ``figures/<name>.png`` resolve.
    """
    check_same_lineage("write_report", "dataset", {"best_genome": best_genome, "test_metrics": test_metrics},
                       "kedro run --from-nodes retrain_best_genome (or the whole kedro run)")
    figure_paths = {name: f"{FIGURES_DIR}/{fname}" for name, fname in R.FIGURE_FILES.items()}
    text = R.markdown_report(best_genome, generation_summary, test_metrics, test_metrics_per_seed, figure_paths)
    figures = report_figures(generation_summary, search_population, best_genome, test_metrics)
    log.info("report: test accuracy %.4f +- %.4f over %s seed(s)", float(test_metrics["accuracy_mean"]),
             float(test_metrics["accuracy_std"]), test_metrics.get("n_seeds"))
    return text, text, figures
