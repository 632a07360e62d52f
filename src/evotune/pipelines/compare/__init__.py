"""Comparison with the baselines of SPEC section 6 (``kedro run --pipelines compare``)."""

from .pipeline import create_pipeline, method_pipeline

__all__ = ["create_pipeline", "method_pipeline"]
