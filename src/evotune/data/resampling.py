"""Resamplings of the data split, for the comparison (``compare.resamplings``).

One training seed per run of a method on one split measures the seeds' noise, not the
split's: two methods a point apart on one split can swap places on another. The comparison
therefore runs every method on ``R`` resamplings of the run's split:

* resampling 0 is the run's own split (``target_train`` / ``target_val`` / ``target_test``,
  unchanged: BioTune's search on it is the default run's, resumed from its study);
* resampling ``r >= 1`` pools the images of the three splits and deals them out again,
  stratified per class, with a seed derived from ``data.split.seed`` and ``r``
  (:func:`resampling_seed`). Each class keeps its number of train, val and test images of
  the run's split, i.e. the sizes ``data.split``'s fractions and caps (``train_per_class``,
  ``val_per_class``; the rest to test) gave it, so the caps hold by construction. When the
  source has an official test split (:func:`has_official_test`) the test set stays fixed and
  only train + val are dealt out again.

:func:`resample` is the one pure function; it returns a :class:`Resampling` (which pooled
images go where, and the resampled split's own ``dataset`` fingerprint,
:func:`evotune.lineage.dataset_fingerprint`, so search studies never mix resamplings).
:meth:`Resampling.splits` materialises the three :class:`~evotune.data.split.Split`.
The ``compare.resample`` node stores all ``R`` of them as one :class:`SplitResamplings`
(positions only: the images stay in the run's splits).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from ..artifacts import Artifact
from ..lineage import dataset_fingerprint
from .split import Split

PARTS = ("train", "val", "test")
#: salt of the resampling draws (the split draws use 0..2, the chunk draws 3..4)
RESAMPLING_SALT = 5


@dataclass
class Resampling(Artifact):
    """One resampling of the run's split: positions into the pool (the run's train, val and test
    images, concatenated in that order), ascending, and the resampled split's fingerprint."""

    index: int  # r; 0 = the run's own split
    seed: int | None  # the seed of the draw (None for resampling 0)
    dataset: str  # fingerprint of the resampled split (resampling 0: the run's)
    train: list[int]
    val: list[int]
    test: list[int]

    def splits(self, train: Split, val: Split, test: Split) -> tuple[Split, Split, Split]:
        """The resampled train, val and test splits (resampling 0: the run's split objects themselves)."""
        if self.index == 0:
            return train, val, test
        parts = (train, val, test)
        bounds = np.cumsum([0] + [len(p.labels) for p in parts])
        out = []
        for pos in (self.train, self.val, self.test):
            pos = np.asarray(pos, dtype=np.int64)
            pieces = [(p, pos[(pos >= lo) & (pos < hi)] - lo) for p, lo, hi in zip(parts, bounds[:-1], bounds[1:])]
            pieces = [(p, torch.from_numpy(i)) for p, i in pieces if len(i)]
            out.append(Split(
                images=torch.cat([p.images[i] for p, i in pieces]),
                labels=torch.cat([p.labels[i] for p, i in pieces]),
                classes=list(train.classes),
                items=[p.items[k] for p, i in pieces for k in i.tolist()],
                preprocessing=train.preprocessing, dataset=self.dataset, dataset_name=train.dataset_name,
            ))
        return out[0], out[1], out[2]


@dataclass
class SplitResamplings(Artifact):
    """The ``R`` resamplings of one run's split (catalog: ``compare_resamplings``)."""

    dataset: str  # the run's split they resample (its fingerprint)
    split_seed: int  # data.split.seed
    fixed_test: bool  # the source's official test split kept fixed
    resamplings: list[Resampling]
    created: str

    def __len__(self) -> int:
        return len(self.resamplings)

    def each(self, train: Split, val: Split, test: Split):
        """``(r, train_r, val_r, test_r)`` for every resampling, materialised one at a time."""
        for rs in self.resamplings:
            yield (rs.index, *rs.splits(train, val, test))


def has_official_test(target_index: pd.DataFrame, respect_official_splits: bool) -> bool:
    """Whether the data stage kept the source's official test split (``data.split.respect_official_splits``
    and an ``official_split`` column with test rows, see :func:`evotune.data.splitting.assign_splits`)."""
    if not respect_official_splits or "official_split" not in target_index.columns:
        return False
    off = target_index["official_split"].fillna("").astype(str).str.strip().str.lower()
    return bool((off == "test").any())


def resampling_seed(split_seed: int, r: int) -> int:
    """The seed of resampling ``r``, derived from ``data.split.seed``."""
    return int(np.random.SeedSequence([int(split_seed) & 0xFFFFFFFF, int(r), RESAMPLING_SALT]).generate_state(1)[0])


def resample(train: Split, val: Split, test: Split, r: int, *, split_seed: int, fixed_test: bool) -> Resampling:
    """Resampling ``r`` of the run's split (see the module's docstring).

    Per class, the pooled images (train + val + test; with ``fixed_test`` train + val only),
    sorted by item id, are shuffled with a generator seeded by ``(seed, label)`` and dealt:
    first the class's val count, then its train count, the rest to test. Deterministic for
    a seed, whatever the order of the images.
    """
    parts = (train, val, test)
    labels = np.concatenate([p.labels.numpy().astype(np.int64) for p in parts])
    items = np.array([str(x) for p in parts for x in p.items], dtype=object)
    origin = np.concatenate([np.full(len(p.labels), k) for k, p in enumerate(parts)])
    if r == 0:
        pos = {name: np.flatnonzero(origin == k) for k, name in enumerate(PARTS)}
        return Resampling(index=0, seed=None, dataset=train.dataset, **{k: v.tolist() for k, v in pos.items()})
    seed = resampling_seed(split_seed, r)
    split = np.array(PARTS, dtype=object)[origin]  # the fixed test rows keep theirs
    pooled = origin < 2 if fixed_test else np.ones(len(labels), dtype=bool)
    for y in sorted(set(labels.tolist())):
        pos = np.flatnonzero(pooled & (labels == y))
        pos = pos[np.argsort(items[pos].astype(str), kind="stable")]
        pos = pos[np.random.default_rng([seed, int(y)]).permutation(len(pos))]
        n_val = int(np.sum((origin == 1) & (labels == y)))
        n_train = int(np.sum((origin == 0) & (labels == y)))
        split[pos[:n_val]] = "val"
        split[pos[n_val:n_val + n_train]] = "train"
        split[pos[n_val + n_train:]] = "test"
    classes = list(train.classes)
    index = pd.DataFrame({"item": items, "label": labels, "class_name": [classes[y] for y in labels], "split": split})
    return Resampling(index=int(r), seed=seed, dataset=dataset_fingerprint(index),
                      **{name: np.flatnonzero(split == name).tolist() for name in PARTS})


def resample_split(train: Split, val: Split, test: Split, r: int, *, split_seed: int, fixed_test: bool
                   ) -> tuple[Split, Split, Split]:
    """The three splits of resampling ``r`` (:func:`resample`, materialised)."""
    return resample(train, val, test, r, split_seed=split_seed, fixed_test=fixed_test).splits(train, val, test)


def make_resamplings(train: Split, val: Split, test: Split, count: int, *, split_seed: int, fixed_test: bool,
                     created: str) -> SplitResamplings:
    """Resamplings ``0 .. count - 1`` of the run's split."""
    return SplitResamplings(
        dataset=train.dataset, split_seed=int(split_seed), fixed_test=bool(fixed_test),
        resamplings=[resample(train, val, test, r, split_seed=split_seed, fixed_test=fixed_test) for r in range(count)],
        created=created,
    )


def on_resampling(backbone, split: Split):
    """The backbone, made for the run's split, recorded as used with a resampling of it (its ``dataset``
    lineage is the resampled split's, so every stage's lineage check holds within one resampling)."""
    return backbone if backbone.dataset == split.dataset else dataclasses.replace(backbone, dataset=split.dataset)
