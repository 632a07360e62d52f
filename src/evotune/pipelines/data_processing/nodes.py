"""Nodes of the target data stage (``data`` parameters, parameters_data_processing.yml).

ingest_index -> target_index_raw (Parquet: item, label, class_name, official_split)
split_dataset -> target_index (+ split; the search cuts its chunks itself)
preprocess_splits -> target_train / target_val / target_test (:class:`~evotune.data.split.Split`:
uint8 tensors, decoded once, with the index's fingerprint)
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, replace

import pandas as pd

from ...data.errors import DataSourceError
from ...data.preprocess import check_image_params, decode_split
from ...data.sources import INDEX_COLUMNS, make_source, unreadable_items
from ...data.split import Split
from ...data.splitting import assign_splits
from ...lineage import dataset_fingerprint
from ...params import check_type, from_params, require, section

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class SplitParams:
    """``data.split`` (conf/base/parameters_data_processing.yml)."""

    seed: int
    val_fraction: float
    test_fraction: float
    train_per_class: int | None
    val_per_class: int | None
    respect_official_splits: bool


@dataclass(frozen=True)
class ImageParams:
    """``data.image``: the size every image is decoded to once."""

    resize_size: int
    crop_size: int


def _section(data_params: dict, key: str) -> dict:
    return section(require(data_params, key, "data"), f"data.{key}")


def split_options(data_params: dict) -> dict:
    return asdict(from_params(SplitParams, _section(data_params, "split"), "data.split"))


def image_options(data_params: dict) -> tuple[int, int]:
    image = from_params(ImageParams, _section(data_params, "image"), "data.image")
    return check_image_params(image.resize_size, image.crop_size)


def ingest_index(data_params: dict) -> pd.DataFrame:
    """List the target source's items and labels, after checking that every image file decodes.

    Unreadable files (empty, truncated, not an image) are all listed in one error, or, with
    ``data.skip_unreadable: true``, left out of the index and listed in the log.
    """
    source = make_source(_section(data_params, "source"))
    skip = check_type(require(data_params, "skip_unreadable", "data"), bool, "data.skip_unreadable")
    index = source.index()
    bad = unreadable_items(source, index["item"])
    if bad:
        lines = [f"{source.file_path(item)}: {reason}" for item, reason in bad]
        shown = "\n  - ".join(lines[:50]) + (f"\n  - ... and {len(lines) - 50} more" if len(lines) > 50 else "")
        if not skip:
            raise DataSourceError(
                f"{len(bad)} of {len(index)} image files cannot be read:\n  - {shown}\n"
                "Replace or delete them, or set data.skip_unreadable: true to leave them out (they are then "
                "listed in the log)."
            )
        log.warning("data.skip_unreadable: %d of %d image files left out:\n  - %s", len(bad), len(index), shown)
        index = index[~index["item"].isin({item for item, _ in bad})].reset_index(drop=True)
    counts = index["label"].value_counts()
    log.info("target source %s: %d images, %d classes (%d..%d per class)", source.describe(), len(index),
             len(source.classes), counts.min(), counts.max())
    return index[INDEX_COLUMNS]


def split_dataset(target_index_raw: pd.DataFrame, data_params: dict, n_chunks: int = 1) -> pd.DataFrame:
    """Stratified train/val/test split (``data.split``). The search cuts train and val into its
    chunks itself (:func:`evotune.search.runner.search_chunks`); ``n_chunks`` only checks here
    that every class has enough train and val images for them (the pre-run data check)."""
    return assign_splits(target_index_raw, **split_options(data_params), n_chunks=n_chunks)


def check_labels(index: pd.DataFrame, classes: list[str]) -> None:
    """Every class of the source has images: the labels are exactly 0..len(classes)-1, so
    the backbone's head (one output per class) and the splits agree."""
    labels = sorted(int(x) for x in index["label"].unique())
    n = len(classes)
    if labels != list(range(n)):
        empty = [f"{k} ({classes[k]!r})" for k in range(n) if k not in set(labels)]
        extra = [y for y in labels if not 0 <= y < n]
        problem = (f"no images of class(es) {', '.join(empty[:20])}" if empty else "") + (
            "; " if empty and extra else "") + (f"labels {extra[:20]} outside 0..{n - 1}" if extra else "")
        raise DataSourceError(
            f"Target labels must be 0..{n - 1}, one per class of the source ({n} classes); the index has "
            f"{problem}. Give every class images (or remove the class from the source), then rerun the "
            "data_processing pipeline."
        )


def preprocess_splits(target_index: pd.DataFrame, data_params: dict) -> tuple[Split, Split, Split]:
    """Decode, resize and centre-crop every image once, per split."""
    resize, crop = image_options(data_params)
    source = make_source(_section(data_params, "source"))
    check_labels(target_index, list(source.classes))
    lineage = {"dataset": dataset_fingerprint(target_index), "dataset_name": source.describe()}
    out = []
    for name in ("train", "val", "test"):
        rows = target_index[target_index["split"] == name]
        if rows.empty:
            raise DataSourceError(f"target_index has no {name} rows; rerun split_dataset.")
        split = replace(decode_split(source, rows, resize_size=resize, crop_size=crop, name=name), **lineage)
        log.info("%s: %d images of %dpx", name, len(split.labels), crop)
        out.append(split)
    return tuple(out)


def check_target_data(data_params: dict, n_chunks: int) -> None:
    """What the data stage will find, before anything runs: every image file decodes (or is
    skipped), and every class has enough images for the splits and the ``n_chunks`` search
    chunks (``SearchConfig.n_chunks``). Raises :class:`DataSourceError` listing every problem
    of the kind it finds."""
    check_data_params(data_params)
    split_dataset(ingest_index(data_params), data_params, n_chunks)


def check_data_params(data_params: dict) -> None:
    """Validate ``data`` (source, image sizes, split keys and ranges) without decoding anything:
    for a pre-run parameter check. Raises :class:`DataSourceError`."""
    make_source(_section(data_params, "source"))
    check_type(require(data_params, "skip_unreadable", "data"), bool, "data.skip_unreadable")
    image_options(data_params)
    opts = split_options(data_params)
    for key in ("val_fraction", "test_fraction"):
        v = opts[key]
        if not isinstance(v, (int, float)) or not 0 <= v < 1:
            raise DataSourceError(f"data.split.{key} must be in [0, 1); got {v!r}.")
    for key in ("train_per_class", "val_per_class"):
        v = opts[key]
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
            raise DataSourceError(f"data.split.{key} must be a positive integer or null; got {v!r}.")
