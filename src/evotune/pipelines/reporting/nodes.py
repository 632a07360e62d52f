"""Nodes of the reporting pipeline (thin wrappers over :mod:`evotune.report`)."""

from __future__ import annotations

import logging
from collections.abc import Mapping

import pandas as pd
from matplotlib.figure import Figure

from ...backbones import BackboneCheckpoint, model_from_checkpoint
from ...evaluation import TestMetrics
from ...fidelity import FidelitySummary
from ...lineage import check_same_lineage
from ...methods import block_parameter_counts
from ...report import figures, labels, markdown, pareto, summary
from ...retraining import TrainedVariant
from ...search.records import GenomeRecord
from ...search.store import StudyStore

log = logging.getLogger(__name__)

# The report's links are relative to the non-versioned copy of the report
# (catalog ``report_latest``: data/08_reporting/latest/report.md); each figure is saved
# beside it, in this folder, by its ``<name>_plot_latest`` dataset.
FIGURES_DIR = "figures"


def summarise_generations(search_population: pd.DataFrame, search_trials: pd.DataFrame) -> pd.DataFrame:
    """Per generation: best / mean / worst / best-so-far fitness, evaluations, cost, best mask."""
    table = summary.generation_summary(search_population, search_trials)
    if len(table):
        last = table.iloc[-1]
        log.info("search: %d generation(s) after the initial population, best fitness %.4f (%s)",
                 int(last["generation"]), float(last["best_so_far"]), last["best_key"])
    return table


def plot_search_figures(
    generation_summary: pd.DataFrame, search_population: pd.DataFrame, best_genome: GenomeRecord
) -> tuple[Figure, Figure, Figure, Figure, Figure, Figure]:
    """Fitness per generation, block-selection heatmap, best genome's lr multipliers; each drawn once and
    returned twice: for its versioned dataset and for its copy beside the ``latest`` report."""
    fitness = figures.plot_fitness(generation_summary)
    blocks = figures.plot_block_selection(search_population, best_genome.block_names)
    lrs = figures.plot_lr_multipliers(best_genome)
    return fitness, blocks, lrs, fitness, blocks, lrs


def plot_gene_trajectories(search_population: pd.DataFrame, best_genome: GenomeRecord) -> tuple[Figure, Figure]:
    """Each gene (one panel per block) and the threshold over the generations: the population, the best of each
    generation, the best genome; twice, like the search figures."""
    fig = figures.plot_gene_trajectories(search_population, best_genome)
    return fig, fig


def tabulate_retrain_history(retrained_models: TrainedVariant, best_genome: GenomeRecord) -> pd.DataFrame:
    """The per-epoch history of the best genome's retraining, one row per seed and epoch (``retrain_history``)."""
    check_same_lineage("tabulate_retrain_history", "dataset",
                       {"best_genome": best_genome, "retrained_models": retrained_models},
                       "kedro run --from-nodes retrain_best_genome (or the whole kedro run)")
    return summary.training_history(retrained_models.runs)


def plot_training_curves(retrain_history: pd.DataFrame, best_genome: GenomeRecord) -> tuple[Figure, Figure]:
    """Training loss and validation macro accuracy per epoch of the retraining, one line per seed, the best epoch
    marked; twice, like the search figures."""
    fig = figures.plot_training_curves(retrain_history, best_genome)
    return fig, fig


def plot_confusion_matrix(test_metrics: TestMetrics) -> tuple[Figure, Figure]:
    """The test confusion matrix (summed over seeds), normalised by row; twice, like the search figures."""
    fig = figures.plot_confusion(test_metrics)
    return fig, fig


def plot_search_fidelity(search_fidelity: pd.DataFrame, search_fidelity_summary: FidelitySummary
                         ) -> tuple[Figure, Figure]:
    """Search score vs test macro accuracy per genome, rho and its interval in the title; twice, like the
    search figures (switched off: a figure saying so, which the report does not link)."""
    fig = figures.plot_search_fidelity(search_fidelity, search_fidelity_summary)
    return fig, fig


def tabulate_pareto_front(search_trials: pd.DataFrame, best_genome: GenomeRecord, backbone: BackboneCheckpoint,
                          search_study_store: StudyStore) -> pd.DataFrame:
    """The search's accuracy-versus-cost front (:func:`evotune.report.pareto.front_table`: every valid evaluation
    with its validation accuracy, trainable share and training seconds, the fronts flagged, the chosen genome
    marked), also written as the three-objective study ``<search study>-front`` for optuna-dashboard's Pareto
    view (:func:`evotune.report.pareto.record_front_study`; not with an in-memory storage)."""
    check_same_lineage("pareto_front", "backbone_id", {"backbone": backbone, "best_genome": best_genome},
                       "kedro run --from-nodes evolutionary_search (or the whole kedro run)")
    model = model_from_checkpoint(backbone)
    if list(model.block_names) != list(best_genome.block_names):
        raise ValueError(f"pareto_front: the backbone's blocks {list(model.block_names)} are not the search's "
                         f"{best_genome.block_names}; rerun the search (kedro run --from-nodes evolutionary_search).")
    counts, total = block_parameter_counts(model)
    table = pareto.front_table(search_trials, counts, total, best_genome.key)
    pareto.record_front_study(search_study_store.url, best_genome.study_name, table)
    return table


def plot_pareto_front(pareto_front: pd.DataFrame) -> tuple[Figure, Figure]:
    """Validation accuracy against trainable share and against training time, the fronts and the chosen genome;
    twice, like the search figures."""
    fig = pareto.plot_front(pareto_front)
    return fig, fig


def write_report(
    best_genome: GenomeRecord,
    generation_summary: pd.DataFrame,
    test_metrics: TestMetrics,
    test_metrics_per_seed: pd.DataFrame,
    search_fidelity_summary: FidelitySummary,
    compare_links: Mapping[str, Mapping[str, str] | None],
    pareto_front: pd.DataFrame | None = None,
    confirmation: pd.DataFrame | None = None,
) -> tuple[str, str]:
    """The markdown report, twice: the versioned archive and the ``latest`` copy, whose relative links
    ``figures/<name>.png`` resolve to the figures saved beside it by the plotting nodes, and whose links to
    the comparison (``compare_links``: the newest versions ``kedro run --pipelines compare`` wrote, if any)
    are relative to it too. ``best_genome`` is the genome the run retrained (``picked_genome``: the search's best
    under ``confirm.rule`` best); ``pareto_front`` and ``confirmation`` get their sections."""
    check_same_lineage("write_report", "dataset", {"best_genome": best_genome, "test_metrics": test_metrics},
                       "kedro run --from-nodes retrain_best_genome (or the whole kedro run)")
    fidelity = search_fidelity_summary
    if fidelity.enabled:
        check_same_lineage("write_report", "dataset", {"best_genome": best_genome, "search_fidelity_summary": fidelity},
                           "kedro run --from-nodes measure_search_fidelity (or the whole kedro run)")
    figure_paths = {name: f"{FIGURES_DIR}/{fname}" for name, fname in labels.FIGURE_FILES.items()
                    if name != "search_fidelity" or fidelity.enabled}
    text = markdown.markdown_report(best_genome, generation_summary, test_metrics, test_metrics_per_seed,
                                    figure_paths, fidelity, compare_links, pareto_front, confirmation)
    log.info("report: test macro accuracy %.4f +- %.4f over %d seed(s)", test_metrics.macro_accuracy_mean,
             test_metrics.macro_accuracy_std, test_metrics.n_seeds)
    return text, text
