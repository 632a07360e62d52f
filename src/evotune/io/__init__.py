"""Kedro dataset classes owned by the project."""

from .torch_dataset import SafetensorsDataset, TorchDataset, TorchExportDataset
from .typed import TypedJSONDataset, TypedTorchDataset

__all__ = ["SafetensorsDataset", "TorchDataset", "TorchExportDataset", "TypedJSONDataset", "TypedTorchDataset"]
