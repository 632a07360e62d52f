"""Catalog datasets for typed artifacts (:mod:`evotune.artifacts`).

They store an artifact as plain data with an underlying format (JSON, ``torch.save``)
and give it back as its class, so that nodes never see the plain form::

    best_genome:
      type: evotune.io.TypedJSONDataset
      artifact: evotune.search.records.GenomeRecord
      filepath: data/07_model_output/best_genome.json
      versioned: true
"""

from __future__ import annotations

import importlib
from typing import Any

from kedro.io.core import DatasetError
from kedro_datasets.json import JSONDataset

from ..artifacts import Artifact
from .torch_dataset import TorchDataset


def _import(path: str) -> type[Artifact]:
    module, _, name = path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as exc:
        raise DatasetError(f"artifact: '{path}' is not an importable class ({exc}).") from exc
    if not (isinstance(cls, type) and issubclass(cls, Artifact)):
        raise DatasetError(f"artifact: '{path}' is not a subclass of evotune.artifacts.Artifact.")
    return cls


class _Typed:
    """The conversion shared by the typed datasets; the dataset class after it in the bases
    (``JSONDataset``, ``TorchDataset``) reads and writes the plain data."""

    _artifact: type[Artifact]

    def __init__(self, *, artifact: str, **kwargs: Any) -> None:
        self._artifact = _import(artifact)
        super().__init__(**kwargs)

    def load(self) -> Artifact:
        return self._artifact.from_dict(super().load(), source=str(self._get_load_path()))

    def save(self, data: Artifact) -> None:
        if not isinstance(data, self._artifact):
            raise DatasetError(f"{type(self).__name__} for {self._artifact.__name__} was given a "
                               f"{type(data).__name__}.")
        super().save(data.to_dict())


class TypedJSONDataset(_Typed, JSONDataset):
    """A typed artifact stored as JSON (``artifact``: the class's import path)."""


class TypedTorchDataset(_Typed, TorchDataset):
    """A typed artifact holding tensors, stored with ``torch.save`` (plain containers only)."""
