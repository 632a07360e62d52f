"""Search fidelity: the search's fitness of a genome against its test accuracy after retraining."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
