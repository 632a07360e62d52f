from kedro.pipeline import Node, Pipeline

from .nodes import ingest_index, preprocess_splits, split_dataset


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(ingest_index, inputs="params:data", outputs="target_index_raw", name="ingest_index"),
            Node(
                split_dataset,
                inputs=["target_index_raw", "params:data"],
                outputs="target_index",
                name="split_dataset",
            ),
            Node(
                preprocess_splits,
                inputs=["target_index", "params:data", "params:backbone", "params:source_pretraining"],
                outputs=["target_train", "target_val", "target_test"],
                name="preprocess_splits",
            ),
        ]
    )
