from kedro.pipeline import Node, Pipeline

from .nodes import make_source_dataset, pretrain_source_model


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                make_source_dataset,
                inputs="params:source_pretraining",
                outputs=["source_train", "source_val", "source_test"],
                name="make_source_dataset",
            ),
            Node(
                pretrain_source_model,
                inputs=["source_train", "source_val", "source_test", "params:source_pretraining", "params:training"],
                outputs=["source_model", "source_pretraining_metrics"],
                name="pretrain_source_model",
            ),
        ]
    )
