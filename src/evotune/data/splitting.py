"""Stratified, seeded train/val/test splits and the search's data chunks.

:func:`assign_splits` works on the index of a source (columns ``item``, ``label``,
``class_name``, ``official_split``) and returns a copy with a ``split`` column;
:func:`chunk_ids` cuts one split's images into the search's chunks (the search stage
calls :func:`search_chunks`, and :func:`chunk_data` puts each chunk on the trainer's device). Each class
is shuffled with its own generator seeded by ``(seed, label)``, after sorting its rows
by item id: the result depends on the seed and the data, not on the row order.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch

from .errors import DataSourceError

if TYPE_CHECKING:
    from ..training import DeviceData
    from .split import Split

log = logging.getLogger(__name__)


def _class_rows(index: pd.DataFrame, mask: np.ndarray, label: int, seed: int, salt: int) -> np.ndarray:
    """Positions (into ``index``) of the class's rows under ``mask``, in a seeded random order."""
    pos = np.flatnonzero(mask & (index["label"].to_numpy() == label))
    pos = pos[np.argsort(index["item"].to_numpy()[pos].astype(str), kind="stable")]
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, int(label), salt])
    return pos[rng.permutation(len(pos))]


def _count(n: int, fraction: float, minimum: int) -> int:
    if fraction <= 0:
        return 0
    return max(minimum, int(math.floor(n * fraction + 0.5)))


def _fraction(value, name: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError) as exc:
        raise DataSourceError(f"{name} must be a number in [0, 1); got {value!r}.") from exc
    if not 0.0 <= v < 1.0:
        raise DataSourceError(f"{name} must be in [0, 1); got {value}.")
    return v


def _cap(value, name: str) -> int | None:
    if value is None:
        return None
    try:
        v = int(value)
    except (TypeError, ValueError) as exc:
        raise DataSourceError(f"{name} must be a positive integer or null; got {value!r}.") from exc
    if v < 1 or v != float(value):
        raise DataSourceError(f"{name} must be a positive integer or null; got {value!r}.")
    return v


def _clean_official(index: pd.DataFrame) -> np.ndarray:
    col = index["official_split"] if "official_split" in index.columns else pd.Series([""] * len(index))
    off = col.fillna("").astype(str).str.strip().str.lower().to_numpy()
    bad = sorted(set(off) - {"", "train", "val", "test"})
    if bad:
        raise DataSourceError(f"official_split values must be train, val, test or empty; got {bad}.")
    return off


def assign_splits(
    index: pd.DataFrame,
    *,
    seed: int,
    val_fraction: float,
    test_fraction: float,
    train_per_class: int | None = None,
    val_per_class: int | None = None,
    respect_official_splits: bool = True,
    param_prefix: str = "data.split",
    n_chunks: int = 1,
) -> pd.DataFrame:
    """Add a ``split`` column (train/val/test), stratified by label and reproducible.

    * Without official splits (or ``respect_official_splits: false``) each class is cut
      into ``test_fraction`` test, ``val_fraction`` val and the rest train (at least one
      val and one test image per class when the fraction is > 0).
    * With official splits they are kept. Missing ones are carved, stratified, out of the
      official train split: val with ``val_fraction``, test with ``test_fraction`` (both
      fractions of the train split).
    * ``train_per_class`` / ``val_per_class`` then cap each class's train / val images (the
      few-label regime). The images over the cap go to test when the source has no
      official test split; otherwise they are dropped (the returned frame has fewer rows).
      ``None``: no cap (the ``auto`` of ``data.split`` is resolved by the caller,
      :func:`evotune.pipelines.data_processing.nodes.split_options`).

    Whenever the caps, or fractions carving val/test out of an official train split, move
    images, a WARNING per split says how many and which parameter moved them.

    Raises :class:`DataSourceError` naming ``<param_prefix>.<parameter>`` when a split
    would be empty or a class would miss from train or val (every such class in one
    message, with the fewest images a class needs for ``n_chunks`` search chunks).
    """
    p = param_prefix
    vf = _fraction(val_fraction, f"{p}.val_fraction")
    tf = _fraction(test_fraction, f"{p}.test_fraction")
    tcap = _cap(train_per_class, f"{p}.train_per_class")
    vcap = _cap(val_per_class, f"{p}.val_per_class")
    missing = {"item", "label"} - set(index.columns)
    if missing:
        raise DataSourceError(f"The index has no column(s) {sorted(missing)}; rerun ingest_index.")
    df = index.reset_index(drop=True).copy()
    df["item"] = df["item"].astype(str)
    df["label"] = df["label"].astype(np.int64)
    off = _clean_official(df)
    official = bool(respect_official_splits) and bool((off != "").any())
    if official:
        if (off == "").any():
            raise DataSourceError(
                f"{int((off == '').sum())} item(s) have no official split while the others have one; "
                f"fix the source or set {p}.respect_official_splits: false."
            )
        if not (off == "train").any():
            raise DataSourceError(
                f"The source's official splits have no train split; set {p}.respect_official_splits: false "
                "to split the data afresh."
            )
        has_val, has_test = bool((off == "val").any()), bool((off == "test").any())
    else:
        off = np.full(len(df), "train", dtype=object)
        has_val = has_test = False
    if not has_val and not has_test and vf + tf >= 1.0:
        raise DataSourceError(f"{p}.val_fraction + {p}.test_fraction must be < 1; got {vf} + {tf}.")

    split = np.array(off, dtype=object)
    labels = sorted(df["label"].unique().tolist())
    pool_mask = off == "train"
    for y in labels:
        pos = _class_rows(df, pool_mask, y, seed, 0)
        n = len(pos)
        n_test = 0 if has_test else _count(n, tf, 1)
        n_val = 0 if has_val else _count(n, vf, 1)
        split[pos[:n_test]] = "test"
        split[pos[n_test:n_test + n_val]] = "val"
        split[pos[n_test + n_val:]] = "train"
    if official:  # the fractions moved images out of the official train split: say so, per split
        for name, key, value in (("val", "val_fraction", vf), ("test", "test_fraction", tf)):
            moved = int(((split == name) & pool_mask).sum())
            if moved:
                log.warning("%s split: %d image(s) moved out of the official train split by %s.%s=%s (the source "
                            "has no official %s split)", name, moved, p, key, value, name)

    dropped = np.zeros(len(df), dtype=bool)
    for name, cap, salt in (("train", tcap, 1), ("val", vcap, 2)):
        if cap is None:
            continue
        over_all = []
        for y in labels:
            pos = _class_rows(df, split == name, y, seed, salt)
            over_all.append(pos[cap:])
        over = np.concatenate(over_all) if over_all else np.zeros(0, dtype=np.int64)
        if len(over):  # the caps moved images: a warning per split (with your own data, caps are yours to set)
            log.warning("%s split: %d image(s) over %s.%s_per_class=%d %s (set it to null to use every image)",
                        name, len(over), p, name, cap,
                        "dropped (the source has an official test split)" if has_test else "moved to test")
        if has_test:
            dropped[over] = True
            split[over] = ""
        else:
            split[over] = "test"
    df["split"] = split
    if dropped.any():
        df = df[~dropped].reset_index(drop=True)
    _validate_splits(df, labels, p, official=official, has_val=has_val, has_test=has_test,
                     fractions=(vf, tf), n_chunks=n_chunks)
    counts = df["split"].value_counts()
    log.info("splits: %d train, %d val, %d test images, %d classes%s",
             counts.get("train", 0), counts.get("val", 0), counts.get("test", 0), len(labels),
             " (official splits)" if official else "")
    return df


def _class_name(df: pd.DataFrame, y: int) -> str:
    if "class_name" in df.columns:
        names = df.loc[df["label"] == y, "class_name"]
        if len(names):
            return f"{names.iloc[0]!r} (label {y})"
    return f"label {y}"


def _validate_splits(df: pd.DataFrame, labels: list[int], p: str, *, official: bool, has_val: bool, has_test: bool,
                     fractions: tuple[float, float], n_chunks: int) -> None:
    where = {
        "train": f"{p}.val_fraction / {p}.test_fraction (lower them)",
        "val": ("the official val split" if has_val else f"{p}.val_fraction (raise it) or {p}.val_per_class"),
        "test": ("the official test split" if has_test else f"{p}.test_fraction (raise it)"),
    }
    for name in ("train", "val", "test"):
        if not (df["split"] == name).any():
            raise DataSourceError(f"The {name} split is empty: set {where[name]}.")
    per = df.groupby(["split", "label"]).size()
    need = max(1, int(n_chunks))  # one train and one val image per class in each search chunk
    short = [f"class {_class_name(df, y)} has {int(per.get((name, y), 0))} {name} image(s) ({need} needed; "
             f"{int((df['label'] == y).sum())} image(s) in all)"
             for y in labels for name in ("train", "val") if per.get((name, y), 0) < need]
    if short:
        raise DataSourceError(_short_classes_message(short, p, official=official, n_chunks=n_chunks,
                                                     val_fraction=fractions[0], test_fraction=fractions[1]))
    lacking = [y for y in labels if per.get(("test", y), 0) == 0]
    if lacking:
        log.warning("%d class(es) have no test image, e.g. %s", len(lacking), _class_name(df, lacking[0]))


def minimum_class_size(val_fraction: float, test_fraction: float, n_chunks: int = 1) -> int:
    """The fewest images a class needs (without official splits) to get ``n_chunks`` train and
    ``n_chunks`` val images (one per search chunk) and, when ``test_fraction`` > 0, a test image."""
    for n in range(1, 1_000_000):
        n_test = _count(n, test_fraction, 1)
        n_val = _count(n, val_fraction, 1)
        if n - n_test - n_val >= n_chunks and n_val >= n_chunks:
            return n
    raise DataSourceError(f"val_fraction={val_fraction} gives no class enough validation images.")


def _short_classes_message(short: list[str], p: str, *, official: bool, n_chunks: int = 1,
                           val_fraction: float | None = None, test_fraction: float | None = None) -> str:
    shown = "\n  - ".join(short[:20]) + (f"\n  - ... and {len(short) - 20} more" if len(short) > 20 else "")
    if official:
        advice = (f"Give those classes more images in the official splits, or set {p}.respect_official_splits: "
                  "false to split the data afresh.")
    else:
        advice = "Give those classes more images, or remove them."
        if val_fraction is not None and test_fraction is not None:
            n_min = minimum_class_size(val_fraction, test_fraction, n_chunks)
            advice = (f"With {p}.val_fraction={val_fraction}, {p}.test_fraction={test_fraction} and {n_chunks} search "
                      f"chunk(s) (search.train_split_pct) a class needs at least {n_min} images: {n_chunks} train and "
                      f"{n_chunks} val image(s) per class, plus one test image. {advice}")
    return f"{len(short)} class problem(s):\n  - {shown}\n{advice}"


#: the salt of each split's chunk draw (the split draws use 0, 1, 2)
CHUNK_SALT = {"train": 3, "val": 4}


def chunk_ids(
    items, labels, *, split: str, n_chunks: int, seed: int, class_names=None,
    param: str = "search.train_split_pct",
) -> np.ndarray:
    """The search chunk (0..n_chunks-1) of every image of one split (``train`` or ``val``).

    Stratified: each class's images, in a random order seeded by ``(seed, label)`` after
    sorting them by item id, are dealt over the chunks in turn, the next class starting where
    the previous one left off (chunk sizes within one image of each other). The result
    depends on the items, labels and seed only, not on the order of the images.
    Raises :class:`DataSourceError` listing the classes with fewer than ``n_chunks`` images.
    """
    salt = CHUNK_SALT[split]
    n = int(n_chunks)
    df = pd.DataFrame({"item": [str(x) for x in items], "label": np.asarray(labels, dtype=np.int64)})
    if class_names is not None:
        df["class_name"] = [class_names[y] for y in df["label"]]
    mask = np.ones(len(df), dtype=bool)
    chunk = np.full(len(df), -1, dtype=np.int64)
    short = []
    offset = 0
    for y in sorted(df["label"].unique().tolist()):
        pos = _class_rows(df, mask, y, seed, salt)
        if len(pos) < n:
            short.append(f"class {_class_name(df, y)} has {len(pos)} {split} image(s); the {n} search chunks "
                         f"need {n}")
            continue
        chunk[pos] = (np.arange(len(pos)) + offset) % n
        offset = (offset + len(pos)) % n  # the next class starts where this one left off: balanced sizes
    if short:
        raise DataSourceError(
            _short_classes_message(short, "data.split", official=False, n_chunks=n)
            + f" Or raise {param} (fewer chunks)."
        )
    return chunk


def search_chunks(train: Split, val: Split, *, n_chunks: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The search chunk of every train and val image (:func:`chunk_ids`, seeded by ``search.chunk_seed``)."""
    ids = [torch.from_numpy(chunk_ids(s.items, s.labels.numpy(), split=name, n_chunks=n_chunks, seed=seed,
                                      class_names=list(s.classes))) for name, s in (("train", train), ("val", val))]
    return ids[0], ids[1]


@dataclass
class ChunkData:
    """One search chunk's train and val images on the trainer's device."""

    train: DeviceData
    val: DeviceData


def chunk_data(device: torch.device, train: Split, val: Split, train_chunks: torch.Tensor, val_chunks: torch.Tensor,
               n_chunks: int) -> dict[int, ChunkData]:
    """Per search chunk, its train and val images on ``device`` (``*_chunks``: :func:`search_chunks`)."""
    from ..training import DeviceData

    def part(split: Split, chunks: torch.Tensor, c: int) -> DeviceData:
        mask = chunks == c
        return DeviceData(split.images[mask].to(device), split.labels[mask].to(device), len(train.classes))

    out = {c: ChunkData(part(train, train_chunks, c), part(val, val_chunks, c)) for c in range(n_chunks)}
    for c, data in out.items():
        if len(data.train) == 0 or len(data.val) == 0:
            raise ValueError(f"Search chunk {c} has no training or validation images; lower the number of "
                             "chunks by raising search.train_split_pct (or give more data).")
    return out
