"""The search's study store as a catalog entry, so that kedro viz shows it as an input.

Whether a rerun of the search trains at all depends on it: a persistent store already
holding the study's trials makes the search reuse them (resume), and workers share a
running search through it. ::

    search_study_store:
      type: evotune.io.StudyStoreDataset
      storage: ${runtime_params:search.storage, "sqlite:///data/07_model_output/optuna_studies.db"}

``storage``: an Optuna storage URL (``sqlite:///...``, ``journal:///...``,
``postgresql://...``) or null (in memory). Its load gives a
:class:`evotune.search.store.StudyStore`; the studies are written by the search itself
(through Optuna), so the dataset cannot be saved.
"""

from __future__ import annotations

from typing import Any

from kedro.io import AbstractDataset, DatasetError


class StudyStoreDataset(AbstractDataset[None, Any]):
    """Loads the :class:`~evotune.search.store.StudyStore` of ``storage`` (read-only)."""

    def __init__(self, *, storage: str | None, metadata: dict[str, Any] | None = None) -> None:
        self._url = storage or None
        self.metadata = metadata

    def load(self) -> Any:
        from ..search.store import StudyStore

        return StudyStore(self._url)

    def save(self, data: None) -> None:
        raise DatasetError("The study store is written by the search through Optuna, not saved by Kedro.")

    def _exists(self) -> bool:
        return True

    def _describe(self) -> dict[str, Any]:
        return {"storage": self._url}
