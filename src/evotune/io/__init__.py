"""Kedro dataset classes owned by the project."""

from .links import NewestVersionLinksDataset
from .study_store import StudyStoreDataset
from .torch_dataset import ArchiveNotWritten, SafetensorsDataset, TorchDataset, TorchExportDataset
from .typed import TypedJSONDataset, TypedTorchDataset

__all__ = ["ArchiveNotWritten", "NewestVersionLinksDataset", "SafetensorsDataset", "StudyStoreDataset", "TorchDataset",
           "TorchExportDataset", "TypedJSONDataset", "TypedTorchDataset"]
