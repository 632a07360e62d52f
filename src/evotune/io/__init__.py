"""Kedro dataset classes owned by the project."""

from .torch_dataset import SafetensorsDataset, TorchDataset, TorchExportDataset

__all__ = ["SafetensorsDataset", "TorchDataset", "TorchExportDataset"]
