from kedro.pipeline import Node, Pipeline

from .nodes import export_best_model


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                export_best_model,
                inputs=["backbone", "retrained_models", "target_test", "params:export", "params:training"],
                outputs=["exported_model_weights", "exported_model_archive", "exported_model_metadata"],
                name="export_best_model",
            )
        ]
    )
