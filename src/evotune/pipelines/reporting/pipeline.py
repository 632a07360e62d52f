from collections.abc import Callable

from kedro.pipeline import Node, Pipeline

from .nodes import (
    plot_confusion_matrix,
    plot_gene_trajectories,
    plot_pareto_front,
    plot_search_fidelity,
    plot_search_figures,
    plot_training_curves,
    summarise_generations,
    tabulate_pareto_front,
    tabulate_retrain_history,
    write_report,
)

SEARCH_FIGURES = ("fitness", "block_selection", "lr_multipliers")


def _figure(func: Callable, inputs: str | list[str], figure: str) -> Node:
    """A node drawing one figure into ``<figure>_plot`` (versioned) and ``<figure>_plot_latest``."""
    return Node(func, inputs=inputs, outputs=[f"{figure}_plot", f"{figure}_plot_latest"], name=func.__name__)


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                summarise_generations,
                inputs=["search_population", "search_trials"],
                outputs="generation_summary",
                name="summarise_generations",
            ),
            Node(
                plot_search_figures,
                inputs=["generation_summary", "search_population", "picked_genome"],
                outputs=[f"{f}_plot" for f in SEARCH_FIGURES] + [f"{f}_plot_latest" for f in SEARCH_FIGURES],
                name="plot_search_figures",
            ),
            _figure(plot_gene_trajectories, ["search_population", "best_genome"], "gene_trajectories"),
            Node(
                tabulate_retrain_history,
                inputs=["retrained_models", "picked_genome"],
                outputs="retrain_history",
                name="tabulate_retrain_history",
            ),
            _figure(plot_training_curves, ["retrain_history", "picked_genome"], "training_curves"),
            _figure(plot_confusion_matrix, "test_metrics", "confusion_matrix"),
            _figure(plot_search_fidelity, ["search_fidelity", "search_fidelity_summary"], "search_fidelity"),
            Node(
                tabulate_pareto_front,
                inputs=["search_trials", "picked_genome", "backbone", "search_study_store"],
                outputs="pareto_front",
                name="pareto_front",
            ),
            _figure(plot_pareto_front, "pareto_front", "pareto_front"),
            Node(
                write_report,
                inputs=["picked_genome", "generation_summary", "test_metrics", "test_metrics_per_seed",
                        "search_fidelity_summary", "compare_links", "pareto_front", "confirmation"],
                outputs=["report", "report_latest"],
                name="write_report",
            ),
        ]
    )
