from kedro.pipeline import Node, Pipeline

from .nodes import measure_search_fidelity


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                measure_search_fidelity,
                inputs=["backbone", "target_train", "target_val", "target_test", "search_population", "search_trials",
                        "best_genome", "params:fidelity", "params:search", "params:retrain", "params:training"],
                outputs=["search_fidelity", "search_fidelity_summary"],
                name="measure_search_fidelity",
            )
        ]
    )
