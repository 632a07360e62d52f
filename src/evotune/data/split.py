"""The typed data split: what the data stages hand to training (:class:`Split`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..artifacts import Artifact


@dataclass(eq=False)  # tensors: compare fields with torch.equal
class Split(Artifact):
    """One preprocessed split, decoded once (catalog: ``target_train``/``_val``/``_test``,
    ``source_train``/``_val``/``_test``; stored by ``evotune.io.TypedTorchDataset``).

    ``preprocessing``, ``dataset`` and ``dataset_name`` are recorded by the target data
    stage (``evotune.data.preprocess.preprocessing_record`` and :mod:`evotune.lineage`);
    the rendered source task's splits leave them ``None``.
    """

    images: torch.Tensor  # uint8 [N, 3, S, S] RGB
    labels: torch.Tensor  # int64 [N], 0..len(classes)-1
    classes: list[str]  # class names, by label
    items: list[str]  # the source's item id of each image
    preprocessing: dict[str, Any] | None = None  # how the images were decoded (preprocessing_record)
    dataset: str | None = None  # fingerprint of the split index (evotune.lineage.dataset_fingerprint)
    dataset_name: str | None = None  # the source it was read from (ImageSource.describe())

    def subset(self, mask: torch.Tensor) -> Split:
        """The images where ``mask`` (bool ``[N]``) is true, in order; classes and records kept."""
        items = [it for it, keep in zip(self.items, mask.tolist()) if keep]
        return Split(images=self.images[mask], labels=self.labels[mask],
                     classes=list(self.classes), items=items, preprocessing=self.preprocessing,
                     dataset=self.dataset, dataset_name=self.dataset_name)
