"""Data layer: the embedded offline task, image sources, splits and one-time preprocessing.

A preprocessed split is a plain dict (``torch.load(weights_only=True)`` reads it)::

    {"images": uint8 [N, 3, S, S] RGB, "labels": int64 [N], "chunks": int64 [N] (-1: not chunked),
     "classes": list[str], "items": list[str]}
"""

from .embedded import load_handwritten_digits, render_printed_characters
from .errors import DataSourceError
from .preprocess import decode_split
from .sources import ImageSource, make_source, to_rgb
from .splitting import assign_splits, chunk_ids

__all__ = [
    "DataSourceError",
    "ImageSource",
    "assign_splits",
    "chunk_ids",
    "decode_split",
    "load_handwritten_digits",
    "make_source",
    "render_printed_characters",
    "to_rgb",
]
