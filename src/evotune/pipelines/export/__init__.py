"""Export the retrained model for use without this package (safetensors, torch.export, metadata)."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
