from kedro.pipeline import Node, Pipeline

from .nodes import backbone_from_source, load_pretrained_backbone


def create_pipeline(**kwargs) -> Pipeline:
    """Backbone from the source-pretraining pipeline's checkpoint (the embedded default)."""
    return Pipeline(
        [
            Node(
                backbone_from_source,
                inputs=["source_model", "target_train", "params:backbone", "params:data"],
                outputs="backbone",
                name="backbone_from_source",
            )
        ]
    )


def create_pretrained_pipeline(**kwargs) -> Pipeline:
    """Backbone from ImageNet weights, a checkpoint file, or random init (`backbone.weights`)."""
    return Pipeline(
        [
            Node(
                load_pretrained_backbone,
                inputs=["target_train", "params:backbone", "params:data"],
                outputs="backbone",
                name="load_pretrained_backbone",
            )
        ]
    )
