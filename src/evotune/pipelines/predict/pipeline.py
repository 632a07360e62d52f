from kedro.pipeline import Node, Pipeline

from .nodes import predict_images


def create_pipeline(**kwargs) -> Pipeline:
    """`kedro run --pipelines predict --params predict.source=<folder or CSV>`: reads the newest
    export (or `predict.model_version`), writes `predictions` and `prediction_skipped`."""
    return Pipeline(
        [
            Node(
                predict_images,
                inputs=["exported_model_weights", "exported_model_metadata", "params:predict"],
                outputs=["predictions", "prediction_skipped"],
                name="predict_images",
            )
        ]
    )
