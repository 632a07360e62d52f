"""Versioned Kedro datasets for torch objects: ``torch.save`` files (checkpoints, tensor
splits), safetensors state dicts and ``torch.export`` archives.

kedro-datasets has no dataset for these files, so the project owns these small ones.
:class:`TorchDataset` stores whatever ``torch.save`` accepts; the project only stores
plain containers (dicts, lists, strings, numbers and tensors), which lets ``load`` use
``weights_only=True``: a ``.pt`` file from elsewhere cannot run code.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

import fsspec
import torch
from kedro.io.core import (
    AbstractVersionedDataset,
    DatasetError,
    Version,
    get_filepath_str,
    get_protocol_and_path,
)


class _BytesDataset(AbstractVersionedDataset[Any, Any]):
    """A versioned file on any fsspec filesystem, read and written whole; subclasses
    turn the object into bytes (:meth:`_encode`) and back (:meth:`_decode`)."""

    _what = "file"

    def __init__(
        self,
        *,
        filepath: str,
        version: Version | None = None,
        credentials: dict[str, Any] | None = None,
        fs_args: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        protocol, path = get_protocol_and_path(filepath, version)
        self._protocol = protocol
        self._fs = fsspec.filesystem(protocol, **(credentials or {}), **(fs_args or {}))
        self.metadata = metadata
        super().__init__(
            filepath=PurePosixPath(path),
            version=version,
            exists_function=self._fs.exists,
            glob_function=self._fs.glob,
        )

    def _describe(self) -> dict[str, Any]:
        return {"filepath": self._filepath, "protocol": self._protocol, "version": self._version}

    def _encode(self, data: Any) -> bytes:  # pragma: no cover - abstract
        raise NotImplementedError

    def _decode(self, raw: bytes) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def load(self) -> Any:
        load_path = get_filepath_str(self._get_load_path(), self._protocol)
        with self._fs.open(load_path, mode="rb") as f:
            raw = f.read()
        try:
            return self._decode(raw)
        except Exception as exc:  # corrupt or foreign file
            raise DatasetError(
                f"Could not read the {self._what} '{load_path}': {exc}. "
                "Delete it (or the version folder it is in) and rerun the node that writes it."
            ) from exc

    def save(self, data: Any) -> None:
        save_path = get_filepath_str(self._get_save_path(), self._protocol)
        raw = self._encode(data)
        self._fs.makedirs(str(PurePosixPath(save_path).parent), exist_ok=True)
        with self._fs.open(save_path, mode="wb") as f:
            f.write(raw)
        self._invalidate_cache()

    def _exists(self) -> bool:
        try:
            load_path = get_filepath_str(self._get_load_path(), self._protocol)
        except DatasetError:
            return False
        return self._fs.exists(load_path)

    def _invalidate_cache(self) -> None:
        filepath = get_filepath_str(self._filepath, self._protocol)
        self._fs.invalidate_cache(filepath)


class TorchDataset(_BytesDataset):
    """Save and load objects with ``torch.save`` / ``torch.load``.

    Example catalog entry::

        backbone:
          type: evotune.io.TorchDataset
          filepath: data/06_models/backbone.pt
          versioned: true
    """

    _what = "torch file"

    def __init__(self, *, filepath: str, weights_only: bool = True, **kwargs: Any) -> None:
        self._weights_only = weights_only
        super().__init__(filepath=filepath, **kwargs)

    def _describe(self) -> dict[str, Any]:
        return {**super()._describe(), "weights_only": self._weights_only}

    def _encode(self, data: Any) -> bytes:
        buffer = io.BytesIO()
        torch.save(data, buffer)
        return buffer.getvalue()

    def _decode(self, raw: bytes) -> Any:
        return torch.load(io.BytesIO(raw), map_location="cpu", weights_only=self._weights_only)


class SafetensorsDataset(_BytesDataset):
    """A flat ``{name: tensor}`` state dict in the safetensors format (no code, no pickle;
    readable by ``safetensors.torch.load_file`` and every runtime that reads safetensors).

    ``header`` (string keys and values) is written into the file's ``__metadata__``; by
    default ``{"format": "pt"}``, the convention of PyTorch weights on the Hugging Face hub.
    Tensors are loaded on the CPU.
    """

    _what = "safetensors file"

    def __init__(self, *, filepath: str, header: dict[str, str] | None = None, **kwargs: Any) -> None:
        self._header = {str(k): str(v) for k, v in (header or {"format": "pt"}).items()}
        super().__init__(filepath=filepath, **kwargs)

    def _encode(self, data: Any) -> bytes:
        from safetensors.torch import save

        if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
            raise DatasetError("SafetensorsDataset saves a dict of tensors (a state dict).")
        return save({k: v.detach().to("cpu").contiguous() for k, v in data.items()}, metadata=self._header)

    def _decode(self, raw: bytes) -> Any:
        from safetensors.torch import load

        return load(raw)


@dataclass(frozen=True)
class ArchiveNotWritten:
    """What :class:`TorchExportDataset` saves in place of a program when ``torch.export`` could not
    capture the model: a short text file saying why (``torch.export.load`` refuses it), loaded back
    as this object. The versioned entry keeps one file per version, so the export's files stay together."""

    reason: str

    MARKER = b"evotune: no torch.export archive\n"


class TorchExportDataset(_BytesDataset):
    """A ``torch.export.ExportedProgram`` saved with ``torch.export.save`` (a ``.pt2``
    archive: graph, weights and constants; loaded with ``torch.export.load``, no Python
    source of the model needed), or an :class:`ArchiveNotWritten`."""

    _what = "torch.export archive"

    def _encode(self, data: Any) -> bytes:
        if isinstance(data, ArchiveNotWritten):
            return ArchiveNotWritten.MARKER + data.reason.encode() + b"\n"
        if not isinstance(data, torch.export.ExportedProgram):
            raise DatasetError(f"TorchExportDataset saves a torch.export.ExportedProgram, got {type(data).__name__}.")
        buffer = io.BytesIO()
        torch.export.save(data, buffer)
        return buffer.getvalue()

    def _decode(self, raw: bytes) -> Any:
        if raw.startswith(ArchiveNotWritten.MARKER):
            return ArchiveNotWritten(raw[len(ArchiveNotWritten.MARKER):].decode().strip())
        return torch.export.load(io.BytesIO(raw))
