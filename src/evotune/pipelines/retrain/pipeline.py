from kedro.pipeline import Node, Pipeline

from .nodes import evaluate_on_test, retrain_best_genome


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                retrain_best_genome,
                inputs=["backbone", "target_train", "target_val", "picked_genome", "params:retrain", "params:training"],
                outputs="retrained_models",
                name="retrain_best_genome",
            ),
            Node(
                evaluate_on_test,
                inputs=["backbone", "retrained_models", "target_test", "params:training"],
                outputs=["test_metrics", "test_metrics_per_seed"],
                name="evaluate_on_test",
            ),
        ]
    )
