"""Decode, resize and centre-crop images into the project's uint8 format: the one place
that defines the preprocessing (training splits, the exported model's metadata, predict)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from ..progress import track
from .errors import DataSourceError
from .sources import ImageSource, open_image_file, to_rgb
from .split import Split

log = logging.getLogger(__name__)


#: ``data.image.interpolation`` -> the PIL filter (what ``torchvision.transforms.Resize`` uses on a PIL image)
RESAMPLING = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}


def resize_shorter_side(img: Image.Image, size: int, interpolation: str = "bilinear") -> Image.Image:
    """Shorter side to ``size`` like ``torchvision.transforms.Resize(size, interpolation)`` on a
    PIL image (PIL antialiases when it shrinks)."""
    w, h = img.size
    if min(w, h) == size:
        return img
    if w <= h:
        new = (size, int(size * h / w))
    else:
        new = (int(size * w / h), size)
    return img.resize(new, RESAMPLING[interpolation])


def center_crop(img: Image.Image, size: int) -> Image.Image:
    """A ``size`` x ``size`` centre crop, offsets rounded like ``torchvision.transforms.CenterCrop``."""
    w, h = img.size
    if w < size or h < size:
        raise DataSourceError(f"Cannot crop {size}px out of a {w}x{h} image: data.image.crop_size must be <= resize_size.")
    left = int(round((w - size) / 2.0))
    top = int(round((h - size) / 2.0))
    return img.crop((left, top, left + size, top + size))


def check_interpolation(value, name: str = "data.image.interpolation") -> str:
    if value not in RESAMPLING:
        raise DataSourceError(f"{name} must be one of {', '.join(RESAMPLING)} (or null: the backbone weights' own); "
                              f"got {value!r}.")
    return str(value)


def check_image_params(resize_size, crop_size, prefix: str = "data.image") -> tuple[int, int]:
    try:
        r, c = int(resize_size), int(crop_size)
    except (TypeError, ValueError) as exc:
        raise DataSourceError(f"{prefix}.resize_size and {prefix}.crop_size must be integers.") from exc
    if r < 1 or c < 1:
        raise DataSourceError(f"{prefix}.resize_size and {prefix}.crop_size must be >= 1; got {r}, {c}.")
    if c > r:
        raise DataSourceError(
            f"{prefix}.crop_size ({c}) must be <= {prefix}.resize_size ({r}): the crop is taken from the "
            "image resized to resize_size on its shorter side."
        )
    return r, c


def image_to_uint8(img: Image.Image, resize_size: int, crop_size: int, interpolation: str = "bilinear") -> np.ndarray:
    """One decoded image as the model sees it before normalisation: any mode to 8-bit RGB
    (:func:`to_rgb`), shorter side resized to ``resize_size`` with ``interpolation``, centre crop
    ``crop_size``; a uint8 array ``[3, crop, crop]``."""
    if img.mode != "RGB":
        img = to_rgb(img)
    img = center_crop(resize_shorter_side(img, resize_size, interpolation), crop_size)
    return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)


def load_image_file(path: str | Path, resize_size: int, crop_size: int, interpolation: str = "bilinear") -> np.ndarray:
    """An image file decoded exactly as training decodes an ``image_folder`` or ``csv``
    source (EXIF orientation, JPEG draft decoding at no less than ``resize_size``,
    :func:`image_to_uint8`). Raises :class:`DataSourceError` for a file that cannot be
    read as an image (its ``__cause__`` is the decoder's error)."""
    return image_to_uint8(open_image_file(Path(path), min_side=resize_size), resize_size, crop_size, interpolation)


def preprocessing_record(resize_size: int, crop_size: int, interpolation: str = "bilinear",
                         origin: str | None = None) -> dict:
    """What :func:`image_to_uint8` does, as plain values (stored with each decoded split and
    in the exported model's metadata; ``predict`` decodes with the same values). ``origin``: where
    the values come from (the backbone weights' recipe, or ``data.image``). Normalisation by the
    backbone's mean and std follows on the device (``training.Normalizer``: ``(x / 255 - mean) / std``)."""
    record = {
        "decode": "PIL; EXIF orientation applied; any mode to 8-bit RGB (transparency composited on white, "
                  "16-bit scaled from 0..65535 to 0..255, palette/grayscale/CMYK converted)",
        "resize_shorter_side": int(resize_size),
        "resize_rule": "shorter side to resize_shorter_side, longer side int(size * long / short) "
                       "(torchvision.transforms.Resize(size))",
        "interpolation": interpolation,
        "antialias": True,
        "library": f"PIL (Image.resize with Image.Resampling.{RESAMPLING[interpolation].name})",
        "center_crop": int(crop_size),
        "crop_rule": "offsets round((w - crop) / 2), round((h - crop) / 2) (torchvision.transforms.CenterCrop)",
        "layout": "uint8 RGB, channels first [3, crop, crop]",
    }
    if origin is not None:
        record["origin"] = origin
    return record


def decode_split(
    source: ImageSource,
    index_rows: pd.DataFrame,
    *,
    resize_size: int,
    crop_size: int,
    interpolation: str = "bilinear",
    origin: str | None = None,
    batch: int = 256,
    name: str = "images",
) -> Split:
    """Decode each image of ``index_rows`` once into a :class:`Split` (without lineage).

    ``index_rows``: ``item`` and ``label``. Images are
    resized (shorter side to ``resize_size``, with ``interpolation``), centre-cropped to ``crop_size`` and written
    straight into one preallocated uint8 tensor, ``batch`` items at a time, so the PIL
    images of the whole split never sit in memory together.
    """
    r, c = check_image_params(resize_size, crop_size)
    interpolation = check_interpolation(interpolation)
    rows = index_rows.reset_index(drop=True)
    n = len(rows)
    items = rows["item"].astype(str).tolist()
    labels = torch.from_numpy(np.array(rows["label"], dtype=np.int64))
    images = torch.empty((n, 3, c, c), dtype=torch.uint8)
    out = images.numpy()  # shares memory
    with track(f"decoding {name}", n, unit="images") as stage:
        for start in range(0, n, batch):
            part = items[start:start + batch]
            k = start
            for img in source.load_images(part, min_side=r):
                out[k] = image_to_uint8(img, r, c, interpolation)
                k += 1
            if k != start + len(part):
                raise DataSourceError(f"{source.describe()}: returned {k - start} images for {len(part)} items.")
            stage.advance(len(part))
    classes = list(source.classes)
    if n and int(labels.max()) >= len(classes):
        raise DataSourceError(
            f"The index has label {int(labels.max())} but {source.describe()} has {len(classes)} classes; "
            "rerun the data_processing pipeline from ingest_index."
        )
    return Split(images=images, labels=labels, classes=classes, items=items,
                 preprocessing=preprocessing_record(r, c, interpolation, origin))
