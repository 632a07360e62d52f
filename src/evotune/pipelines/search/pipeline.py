from kedro.pipeline import Node, Pipeline

from .nodes import confirm_pick, run_search, run_search_worker

SEARCH_INPUTS = [
    "backbone", "target_train", "target_val", "search_study_store", "params:search", "params:training",
]


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                run_search,
                inputs=SEARCH_INPUTS,
                outputs=["search_trials", "search_population", "best_genome"],
                name="evolutionary_search",
            ),
            Node(
                confirm_pick,
                inputs=["backbone", "target_train", "target_val", "search_trials", "best_genome", "params:confirm",
                        "params:search", "params:training"],
                outputs=["confirmation", "picked_genome"],
                name="confirm_pick",
            ),
        ]
    )


def create_worker_pipeline(**kwargs) -> Pipeline:
    """Extra worker processes of a running search (same parameters, shared search_study_store)."""
    return Pipeline(
        [Node(run_search_worker, inputs=SEARCH_INPUTS, outputs="search_worker_log", name="search_worker")]
    )
