"""Kedro dataset classes owned by the project."""

from .study_store import StudyStoreDataset
from .torch_dataset import SafetensorsDataset, TorchDataset, TorchExportDataset
from .typed import TypedJSONDataset, TypedTorchDataset

__all__ = ["SafetensorsDataset", "StudyStoreDataset", "TorchDataset", "TorchExportDataset", "TypedJSONDataset", "TypedTorchDataset"]
