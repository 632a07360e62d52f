"""Links to the newest version of other pipelines' versioned files, for a report to point at.

The report (``reporting``) links the comparison with the baselines, which the separate
``compare`` pipeline writes, when that has run; Kedro has no optional inputs, so this
read-only entry says which of the files exist and gives their newest version as a path
relative to the folder of the report that links them::

    compare_links:
      type: evotune.io.NewestVersionLinksDataset
      filepaths:
        table: data/08_reporting/compare/comparison.md
        figure: data/08_reporting/compare/accuracy_vs_trainable.png
      relative_to: data/08_reporting/latest

Its load gives ``{name: {"link": "../compare/comparison.md/<version>/comparison.md",
"version": "<version>"}}``, ``None`` for a file with no saved version yet. The versions are
Kedro's (``<filepath>/<version>/<file name>``), newest first as Kedro orders them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from kedro.io import AbstractDataset, DatasetError


def newest_version(filepath: str | os.PathLike) -> tuple[str, Path] | None:
    """The newest saved version of a Kedro-versioned ``filepath`` (``<filepath>/<version>/<name>``):
    its version and file, or None when none is saved."""
    path = Path(filepath)
    if not path.is_dir():
        return None
    for version in sorted((p.name for p in path.iterdir() if p.is_dir()), reverse=True):
        file = path / version / path.name
        if file.is_file():
            return version, file
    return None


class NewestVersionLinksDataset(AbstractDataset[None, dict]):
    """Loads, per name of ``filepaths``, the newest version of that versioned file as a link relative to
    ``relative_to`` (read-only; ``None`` for a file not written yet)."""

    def __init__(self, *, filepaths: dict[str, str], relative_to: str, metadata: dict[str, Any] | None = None) -> None:
        if not isinstance(filepaths, dict) or not filepaths:
            raise DatasetError("filepaths: give a mapping name -> versioned file path.")
        self._filepaths = {str(k): str(v) for k, v in filepaths.items()}
        self._relative_to = str(relative_to)
        self.metadata = metadata

    def load(self) -> dict[str, dict[str, str] | None]:
        out: dict[str, dict[str, str] | None] = {}
        for name, filepath in self._filepaths.items():
            found = newest_version(filepath)
            out[name] = None if found is None else {
                "link": Path(os.path.relpath(found[1], self._relative_to)).as_posix(), "version": found[0]}
        return out

    def save(self, data: None) -> None:
        raise DatasetError("These links are read from the files another pipeline wrote; they are not saved.")

    def _exists(self) -> bool:
        return True

    def _describe(self) -> dict[str, Any]:
        return {"filepaths": self._filepaths, "relative_to": self._relative_to}
