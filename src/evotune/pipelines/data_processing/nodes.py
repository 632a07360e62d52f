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

from ...backbones import ImageRecipe, weights_recipe
from ...data.embedded import FEW_LABEL_CAPS
from ...data.errors import DataSourceError
from ...data.preprocess import check_image_params, check_interpolation, decode_split
from ...data.sources import INDEX_COLUMNS, make_source, unreadable_items
from ...data.split import Split
from ...data.splitting import assign_splits
from ...errors import EvotuneError
from ...lineage import dataset_fingerprint
from ...params import check_type, from_params, require, section

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class SplitParams:
    """``data.split`` (conf/base/parameters_data_processing.yml)."""

    seed: int
    val_fraction: float
    test_fraction: float
    #: ``auto`` (conf/base): the task's caps (:data:`~evotune.data.embedded.FEW_LABEL_CAPS` for the
    #: embedded task, none for a user's source); an integer caps each class; null: every image
    train_per_class: int | str | None
    val_per_class: int | str | None
    respect_official_splits: bool


#: ``data.split.train_per_class`` / ``val_per_class``: the task's own caps
AUTO_CAPS = "auto"


@dataclass(frozen=True)
class ImageParams:
    """``data.image``: how every image is decoded once. ``null`` (conf/base): the backbone
    weights' own recipe (:func:`evotune.backbones.weights_recipe`); a value set here wins."""

    resize_size: int | None
    crop_size: int | None
    interpolation: str | None


@dataclass(frozen=True)
class ImageSettings:
    """``data.image`` resolved: explicit values, the rest from the backbone weights' recipe."""

    resize_size: int
    crop_size: int
    interpolation: str
    origin: str  # where the values come from (recorded with the decoded splits and the export)


def _section(data_params: dict, key: str) -> dict:
    return section(require(data_params, key, "data"), f"data.{key}")


def task_caps(source_config: dict | None) -> dict[str, int | None]:
    """What ``auto`` caps mean for the source ``data.source``: the embedded task's few-label caps
    (:data:`~evotune.data.embedded.FEW_LABEL_CAPS`); no caps (every image) for any other source."""
    kind = source_config.get("kind") if isinstance(source_config, dict) else None
    if kind == "embedded_digits":
        return dict(FEW_LABEL_CAPS)
    return {"train_per_class": None, "val_per_class": None}


def split_options(data_params: dict) -> dict:
    """``data.split`` with ``auto`` caps replaced by the task's (:func:`task_caps`)."""
    opts = asdict(from_params(SplitParams, _section(data_params, "split"), "data.split"))
    caps = task_caps(data_params.get("source"))
    for key in ("train_per_class", "val_per_class"):
        v = opts[key]
        if isinstance(v, str):
            if v != AUTO_CAPS:
                raise DataSourceError(f"data.split.{key} must be auto (the task's caps: the embedded task's "
                                      f"few-label caps, every image of your own source), a positive integer or "
                                      f"null (every image); got {v!r}.")
            opts[key] = caps[key]
    return opts


def _source_model_recipe(arch: str, source_params: dict | None) -> ImageRecipe:
    """``backbone.weights: source``: the source model is trained on the rendered source images,
    ``source_pretraining.data.image_size`` square (mean/std: theirs, recorded in its checkpoint)."""
    if source_params is None:
        return weights_recipe(arch, "source")
    size = check_type(require(require(source_params, "data", "source_pretraining"), "image_size",
                              "source_pretraining.data"), int, "source_pretraining.data.image_size")
    spec = weights_recipe(arch, "source")
    return ImageRecipe(size, size, "bilinear", spec.mean, spec.std,
                       f"the source model (source_pretraining.data.image_size {size})")


def image_options(data_params: dict, backbone_params: dict | None = None,
                  source_params: dict | None = None) -> ImageSettings:
    """``data.image``, its nulls filled from the weights of ``backbone_params`` (``backbone``:
    ``arch`` and ``weights``; ``source``: the source model's images, ``source_params`` =
    ``source_pretraining``). An explicit value wins; one that differs from the weights' recipe is
    logged at WARNING level here, before any image is decoded. Raises :class:`DataSourceError`."""
    image = from_params(ImageParams, _section(data_params, "image"), "data.image")
    explicit = {k: v for k, v in asdict(image).items() if v is not None}
    if "interpolation" in explicit:
        check_interpolation(explicit["interpolation"])
    complete = len(explicit) == 3
    if complete:
        r, c = check_image_params(image.resize_size, image.crop_size)
    if backbone_params is None:
        if complete:
            return ImageSettings(r, c, image.interpolation, "data.image")
        missing = ", ".join(f"data.image.{k}" for k in ("resize_size", "crop_size", "interpolation") if k not in explicit)
        raise DataSourceError(f"{missing} null (the backbone weights' own) needs the backbone parameters; set a value.")
    arch = require(backbone_params, "arch", "backbone")
    weights = require(backbone_params, "weights", "backbone")
    try:
        if str(weights).strip().lower() == "source":
            recipe = _source_model_recipe(arch, source_params)
        else:
            recipe = weights_recipe(arch, weights)
    except EvotuneError as exc:
        if complete:  # every value set: nothing to read from the weights (the backbone stage reports its own problem)
            return ImageSettings(r, c, image.interpolation, "data.image")
        raise DataSourceError(f"data.image: the preprocessing of backbone {arch} ({weights}) cannot be read: "
                              f"{exc}") from exc
    own = {"resize_size": recipe.resize_size, "crop_size": recipe.crop_size, "interpolation": recipe.interpolation}
    differ = [f"{k} {explicit[k]} (the weights': {own[k]})" for k in own if k in explicit and explicit[k] != own[k]]
    if differ:
        log.warning("data.image sets %s: the images are decoded so, unlike %s was trained (%s). Set those keys of "
                    "data.image to null to use the weights' own preprocessing.", "; ".join(differ), arch, recipe.origin)
    values = {**own, **explicit}
    r, c = check_image_params(values["resize_size"], values["crop_size"])
    origin = recipe.origin if not explicit else f"{recipe.origin}; data.image sets {', '.join(sorted(explicit))}"
    log.info("data.image: shorter side to %d px (%s), centre crop %d px, from %s", r, values["interpolation"], c, origin)
    return ImageSettings(r, c, values["interpolation"], origin)


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
    chunks itself (:func:`evotune.data.splitting.search_chunks`); ``n_chunks`` only checks here
    that every class has enough train and val images for them (the pre-run data check)."""
    opts = split_options(data_params)
    auto = [k for k in ("train_per_class", "val_per_class") if _section(data_params, "split").get(k) == AUTO_CAPS]
    if auto:
        log.info("data.split.%s: auto, for this source %s", " / ".join(auto),
                 " / ".join("every image" if opts[k] is None else f"at most {opts[k]} per class" for k in auto))
    return assign_splits(target_index_raw, **opts, n_chunks=n_chunks)


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


def preprocess_splits(target_index: pd.DataFrame, data_params: dict, backbone_params: dict | None = None,
                      source_params: dict | None = None) -> tuple[Split, Split, Split]:
    """Decode, resize and centre-crop every image once, per split, with ``data.image`` (its nulls:
    the recipe of the ``backbone`` weights, :func:`image_options`)."""
    image = image_options(data_params, backbone_params, source_params)
    resize, crop = image.resize_size, image.crop_size
    source = make_source(_section(data_params, "source"))
    check_labels(target_index, list(source.classes))
    lineage = {"dataset": dataset_fingerprint(target_index), "dataset_name": source.describe()}
    out = []
    for name in ("train", "val", "test"):
        rows = target_index[target_index["split"] == name]
        if rows.empty:
            raise DataSourceError(f"target_index has no {name} rows; rerun split_dataset.")
        split = replace(decode_split(source, rows, resize_size=resize, crop_size=crop,
                                     interpolation=image.interpolation, origin=image.origin, name=name), **lineage)
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


def check_data_params(data_params: dict, backbone_params: dict | None = None,
                      source_params: dict | None = None) -> None:
    """Validate ``data`` (source, image sizes, split keys and ranges) without decoding anything:
    for a pre-run parameter check. With ``backbone_params``, the nulls of ``data.image`` are
    resolved from the weights (and a mismatch is logged). Raises :class:`DataSourceError`."""
    make_source(_section(data_params, "source"))
    check_type(require(data_params, "skip_unreadable", "data"), bool, "data.skip_unreadable")
    if backbone_params is not None:
        image_options(data_params, backbone_params, source_params)
    else:
        from_params(ImageParams, _section(data_params, "image"), "data.image")
    opts = split_options(data_params)  # auto caps resolved
    for key in ("val_fraction", "test_fraction"):
        v = opts[key]
        if not isinstance(v, (int, float)) or not 0 <= v < 1:
            raise DataSourceError(f"data.split.{key} must be in [0, 1); got {v!r}.")
    for key in ("train_per_class", "val_per_class"):
        v = opts[key]
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
            raise DataSourceError(f"data.split.{key} must be a positive integer or null; got {v!r}.")
