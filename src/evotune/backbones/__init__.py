"""Backbone architectures, their block partitions, weights and checkpoints.

The package, by what its modules hold:

* :mod:`~evotune.backbones.registry` - the registered architectures (:class:`ArchSpec`:
  block names, input sizes, mean/std), how torchvision builds each family and how it is
  cut into stages, and the way back to a plain torchvision model.
* :mod:`~evotune.backbones.staged` - :class:`StagedModel` (one stage per block, in
  forward order; the prefix forward the frozen-prefix cache uses), head replacement and
  parameter counts.
* :mod:`~evotune.backbones.weights` - :func:`build_model`: random init, ImageNet weights
  from the local torch hub cache (one loading path, one message when they are missing),
  or a checkpoint file.
* :mod:`~evotune.backbones.timm_models` - ``backbone.arch: timm/<model name>`` (optional timm):
  blocks from timm's ``group_matcher``, the traced forward cut between them, weights from the
  Hugging Face hub cache.
* :mod:`~evotune.backbones.checkpoint` - :class:`BackboneCheckpoint`, the typed artifact
  of the ``backbone`` and ``source_model`` catalog entries, and checkpoint files.

The names below are the package's public API; the rest of the project imports them from
``evotune.backbones``.
"""

from .checkpoint import CHECKPOINT_FORMAT, BackboneCheckpoint, load_checkpoint, make_checkpoint, model_from_checkpoint
from .registry import (
    ARCHITECTURES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    ArchSpec,
    BackboneWeightsError,
    UnknownArchitectureError,
    construct_from_description,
    get_arch,
    staged_from_torchvision,
    to_torchvision,
    torchvision_constructor,
    torchvision_description,
    torchvision_key_map,
    torchvision_state_dict,
)
from .staged import StagedModel, count_parameters, head_linears, redraw_head, replace_head
from .weights import (
    build_model,
    imagenet_variant,
    imagenet_weights_path,
    imagenet_weights_problem,
    is_weights_url,
    url_weights_problem,
)

__all__ = [
    "ARCHITECTURES",
    "CHECKPOINT_FORMAT",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ArchSpec",
    "BackboneCheckpoint",
    "BackboneWeightsError",
    "StagedModel",
    "UnknownArchitectureError",
    "build_model",
    "construct_from_description",
    "count_parameters",
    "get_arch",
    "head_linears",
    "imagenet_variant",
    "imagenet_weights_path",
    "imagenet_weights_problem",
    "is_weights_url",
    "load_checkpoint",
    "make_checkpoint",
    "model_from_checkpoint",
    "redraw_head",
    "replace_head",
    "staged_from_torchvision",
    "to_torchvision",
    "torchvision_constructor",
    "torchvision_description",
    "torchvision_key_map",
    "url_weights_problem",
    "torchvision_state_dict",
]
