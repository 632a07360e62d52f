"""Classify new images (a folder or a CSV of paths) with the exported model."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
