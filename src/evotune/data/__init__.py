"""Data layer: the embedded offline task, image sources, splits and one-time preprocessing.

A preprocessed split is a :class:`Split` (``evotune.data.split``): uint8 ``images``
``[N, 3, S, S]`` RGB, int64 ``labels``, ``classes``,
``items``, and for the target data its ``preprocessing`` and lineage (``dataset``,
``dataset_name``). The catalog stores it as a plain dict (``evotune.io.TypedTorchDataset``;
``torch.load(weights_only=True)`` reads it).
"""

from .embedded import load_handwritten_digits, render_printed_characters
from .errors import DataSourceError
from .preprocess import decode_split
from .sources import ImageSource, make_source, to_rgb
from .split import Split
from .splitting import assign_splits, chunk_ids

__all__ = [
    "DataSourceError",
    "ImageSource",
    "Split",
    "assign_splits",
    "chunk_ids",
    "decode_split",
    "load_handwritten_digits",
    "make_source",
    "render_printed_characters",
    "to_rgb",
]
