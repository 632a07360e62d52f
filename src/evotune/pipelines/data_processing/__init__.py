"""Target data: ingest the source's index, split it (train/val/test), decode once."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
