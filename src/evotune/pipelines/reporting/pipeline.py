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
            Node(
                plot_gene_trajectories,
                inputs=["search_population", "best_genome"],
                outputs=["gene_trajectories_plot", "gene_trajectories_plot_latest"],
                name="plot_gene_trajectories",
            ),
            Node(
                tabulate_retrain_history,
                inputs=["retrained_models", "picked_genome"],
                outputs="retrain_history",
                name="tabulate_retrain_history",
            ),
            Node(
                plot_training_curves,
                inputs=["retrain_history", "picked_genome"],
                outputs=["training_curves_plot", "training_curves_plot_latest"],
                name="plot_training_curves",
            ),
            Node(
                plot_confusion_matrix,
                inputs="test_metrics",
                outputs=["confusion_matrix_plot", "confusion_matrix_plot_latest"],
                name="plot_confusion_matrix",
            ),
            Node(
                plot_search_fidelity,
                inputs=["search_fidelity", "search_fidelity_summary"],
                outputs=["search_fidelity_plot", "search_fidelity_plot_latest"],
                name="plot_search_fidelity",
            ),
            Node(
                tabulate_pareto_front,
                inputs=["search_trials", "picked_genome", "backbone", "search_study_store"],
                outputs="pareto_front",
                name="pareto_front",
            ),
            Node(
                plot_pareto_front,
                inputs="pareto_front",
                outputs=["pareto_front_plot", "pareto_front_plot_latest"],
                name="plot_pareto_front",
            ),
            Node(
                write_report,
                inputs=["picked_genome", "generation_summary", "test_metrics", "test_metrics_per_seed",
                        "search_fidelity_summary", "compare_links", "pareto_front", "confirmation"],
                outputs=["report", "report_latest"],
                name="write_report",
            ),
        ]
    )
