"""Where target images come from: ``make_source(data.source)`` -> an :class:`ImageSource`.

Kinds (``data.source.kind``):

* ``embedded_digits``: scikit-learn's bundled handwritten digits (offline, the default).
* ``image_folder``: ``path/<class>/<image>``, or ``path/{train,val,test}/<class>/<image>``
  (official splits; ``val`` and ``test`` optional).
* ``torchvision``: a torchvision dataset by ``name`` in ``root`` with its official splits.
* ``csv``: a CSV of image ids and labels (ISIC style), images in ``root``.

An :class:`ImageSource` lists its items with :meth:`ImageSource.index` (no decoding) and
decodes chosen items to 8-bit RGB PIL images with :meth:`ImageSource.load_images`.
Every problem with the data or its parameters is a :class:`DataSourceError` whose
message names the file, folder or parameter and what to do.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image, ImageOps

from ..downloads import offline
from .errors import DataSourceError

log = logging.getLogger(__name__)

INDEX_COLUMNS = ["item", "label", "class_name", "official_split"]
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".pbm", ".bmp", ".tif", ".tiff", ".webp", ".gif")
SPLIT_NAMES = ("train", "val", "test")
_SPLIT_ALIASES = {
    "train": "train", "training": "train", "trn": "train",
    "val": "val", "valid": "val", "validation": "val", "dev": "val",
    "test": "test", "testing": "test", "tst": "test",
}


# --------------------------------------------------------------------------- decoding
def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL image as 8-bit RGB.

    Transparent images are composited on white; 16-bit images ("I;16*", and "I" within
    0..65535) are scaled from 0..65535 to 0..255 (not clipped); other 32-bit integer and
    float images are scaled from their own range (floats within 0..1 from 0..1).
    """
    mode = img.mode
    if mode == "RGB" and "transparency" not in img.info:
        return img
    if mode.startswith("I;16") or mode == "I":
        a = np.asarray(img).astype(np.float64)
        if mode == "I" and a.size and (a.min() < 0 or a.max() > 65535):
            a = (a - a.min()) * (255.0 / max(float(a.max() - a.min()), 1.0))
        else:
            a = a * (255.0 / 65535.0)
        return Image.fromarray(np.rint(a).clip(0, 255).astype(np.uint8), "L").convert("RGB")
    if mode == "F":
        a = np.asarray(img).astype(np.float64)
        a = np.nan_to_num(a)
        lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 1.0)
        if lo >= 0.0 and hi <= 1.0:
            a = a * 255.0
        else:
            a = (a - lo) * (255.0 / max(hi - lo, 1e-12))
        return Image.fromarray(np.rint(a).clip(0, 255).astype(np.uint8), "L").convert("RGB")
    if mode in ("RGBA", "RGBa", "LA", "La", "PA") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if mode == "1":
        return img.convert("L").convert("RGB")
    return img.convert("RGB")  # L, P, CMYK, YCbCr, ...


def _draft_size(size: tuple[int, int], min_side: int) -> tuple[int, int] | None:
    w, h = size
    s = min_side / max(min(w, h), 1)
    if s >= 0.5:  # JPEG draft only reduces by 2, 4 or 8
        return None
    return (math.ceil(w * s), math.ceil(h * s))


def open_image_file(path: Path, min_side: int | None = None) -> Image.Image:
    """Decode an image file to RGB (EXIF orientation applied). ``min_side``: the shorter
    side the caller will resize to; large JPEGs are then decoded at a reduced scale that
    still keeps at least that many pixels (much faster, same result after resizing)."""
    try:
        with Image.open(path) as im:
            if min_side and im.format == "JPEG":
                draft = _draft_size(im.size, int(min_side))
                if draft:
                    im.draft(None, draft)
            im.load()
            ImageOps.exif_transpose(im, in_place=True)
            rgb = to_rgb(im)
            if rgb is im:
                rgb = im.copy()
            return rgb
    except DataSourceError:
        raise
    except Exception as exc:  # noqa: BLE001 - any decoder failure is a bad file
        raise DataSourceError(
            f"Could not read the image file '{path}' ({type(exc).__name__}: {exc}). "
            "Replace or delete the file (it is corrupt or not an image), then rerun."
        ) from exc


# --------------------------------------------------------------------------- sources
class ImageSource:
    """The interface every source implements."""

    kind: str = ""
    classes: list[str]

    def index(self) -> pd.DataFrame:
        """Columns ``item`` (str, unique), ``label`` (int), ``class_name``, ``official_split``."""
        raise NotImplementedError

    def load_images(self, items: Iterable[str], *, min_side: int | None = None) -> Iterator[Image.Image]:
        """Decode ``items`` in order to 8-bit RGB PIL images, one at a time."""
        raise NotImplementedError

    def describe(self) -> str:
        return self.kind

    def file_path(self, item: str) -> Path | None:
        """The image file behind ``item``; None for sources that are not image files."""
        return None


_SCAN_CACHE: dict[tuple, list[tuple[str, str]]] = {}


def unreadable_items(source: ImageSource, items: Iterable[str]) -> list[tuple[str, str]]:
    """``(item, reason)`` for every item whose image file cannot be decoded (empty, truncated,
    not an image). Every file is opened and decoded (JPEGs at a reduced scale, which still
    reads the whole file). The result is remembered for the same files, sizes and times,
    so that the pre-run check and the ingestion node decode each file once."""
    paths = [(str(item), source.file_path(str(item))) for item in items]
    if not paths or paths[0][1] is None:
        return []
    stats = []
    bad: list[tuple[str, str]] = []
    for item, path in paths:
        try:
            st = path.stat()
            stats.append((item, st.st_size, st.st_mtime_ns))
        except OSError as exc:
            bad.append((item, f"cannot be read ({exc.strerror or exc})"))
    key = (str(getattr(source, "root", "")), tuple(stats))
    if key in _SCAN_CACHE:
        return bad + _SCAN_CACHE[key]
    found: list[tuple[str, str]] = []
    sizes = {item: size for item, size, _ in stats}
    for i, (item, path) in enumerate(paths):
        if item not in sizes:
            continue
        if i and i % 5000 == 0:
            log.info("checked %d of %d image files", i, len(paths))
        if sizes[item] == 0:
            found.append((item, "empty file (0 bytes)"))
            continue
        try:
            with Image.open(path) as im:
                if im.format == "JPEG":
                    im.draft("RGB", (64, 64))
                im.load()
        except Exception as exc:  # noqa: BLE001 - any decoder failure is a bad file
            found.append((item, f"{type(exc).__name__}: {exc}"))
    _SCAN_CACHE[key] = found
    return bad + found


def _check_index(df: pd.DataFrame, classes: list[str], where: str) -> pd.DataFrame:
    df = df[INDEX_COLUMNS].reset_index(drop=True)
    dup = df["item"][df["item"].duplicated()]
    if len(dup):
        raise DataSourceError(f"{where}: item ids must be unique; {len(dup)} repeat, e.g. {dup.iloc[0]!r}.")
    present = sorted(df["label"].unique().tolist())
    if len(present) < 2:
        only = classes[present[0]] if present else "none"
        raise DataSourceError(
            f"{where} has a single class ({only!r}, {len(df)} images): a classifier needs 2 or more classes. "
            "Add the other classes' images or point data.source at another dataset."
        )
    return df


class EmbeddedDigitsSource(ImageSource):
    kind = "embedded_digits"

    def __init__(self, polarity: str = "dark_on_light") -> None:
        from .embedded import load_handwritten_digits

        self.polarity = polarity
        self._images, self._labels, self.classes = load_handwritten_digits(polarity)

    def index(self) -> pd.DataFrame:
        labels = self._labels.tolist()
        df = pd.DataFrame({
            "item": [f"digits:{i}" for i in range(len(labels))],
            "label": labels,
            "class_name": [self.classes[y] for y in labels],
            "official_split": "",
        })
        return _check_index(df, self.classes, "embedded_digits")

    def load_images(self, items, *, min_side=None):
        for item in items:
            try:
                i = int(str(item).split(":", 1)[1])
                arr = self._images[i]
            except (IndexError, ValueError) as exc:
                raise DataSourceError(
                    f"'{item}' is not an item of the embedded_digits source (expected 'digits:<0..{len(self._labels) - 1}>'); "
                    "rerun the data_processing pipeline from ingest_index."
                ) from exc
            yield Image.fromarray(arr.permute(1, 2, 0).contiguous().numpy(), "RGB")

    def describe(self) -> str:
        return f"embedded_digits (scikit-learn handwritten digits, {self.polarity})"


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _image_files(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.rglob("*")
        if p.suffix.lower() in IMG_EXTENSIONS and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


class ImageFolderSource(ImageSource):
    kind = "image_folder"

    def __init__(self, path: str | Path, param: str = "data.source.path") -> None:
        self.root = Path(path).expanduser()
        self.param = param
        root = self.root
        if not root.exists():
            raise DataSourceError(
                f"{param}: the folder '{root}' (absolute: '{root.resolve()}') does not exist. "
                "Set it to a folder with one subfolder of images per class."
            )
        if not root.is_dir():
            raise DataSourceError(f"{param}: '{root}' is a file, not a folder of class subfolders.")
        subdirs = _subdirs(root)
        names = {p.name.lower() for p in subdirs}
        layout = f"'{root}/<class_name>/<image>' or '{root}/train/<class_name>/<image>' (+ val/, test/)"
        if not subdirs:
            n_files = sum(1 for p in root.iterdir() if p.is_file())
            raise DataSourceError(
                f"{param}: the folder '{root}' has no class subfolders ({n_files} files directly in it). "
                f"Put each class's images in its own subfolder: {layout}."
            )
        self.official = bool(names) and names <= set(SPLIT_NAMES)
        if self.official and "train" not in names:
            raise DataSourceError(
                f"{param}: '{root}' holds split folders ({', '.join(sorted(names))}) but no 'train' folder; "
                f"add '{root}/train/<class_name>/<image>'."
            )
        rows: list[tuple[str, str, str]] = []  # item, class name, split
        self.ignored: list[Path] = []  # files that are not images by their extension
        split_dirs = [(p.name.lower(), p) for p in subdirs] if self.official else [("", root)]
        for split, sdir in split_dirs:
            class_dirs = _subdirs(sdir)
            if not class_dirs:
                raise DataSourceError(
                    f"{param}: the split folder '{sdir}' has no class subfolders; lay it out as '{sdir}/<class_name>/<image>'."
                )
            for cdir in class_dirs:
                files = _image_files(cdir)
                images = set(files)
                self.ignored += [p for p in cdir.rglob("*") if p.is_file() and p not in images
                                 and not any(part.startswith(".") for part in p.relative_to(cdir).parts)]
                if not files:
                    raise DataSourceError(
                        f"{param}: the class folder '{cdir}' holds no images (looked for {', '.join(IMG_EXTENSIONS)}). "
                        "Add its images or remove the folder."
                    )
                rows.extend((f.relative_to(root).as_posix(), cdir.name, split) for f in files)
        self.classes = sorted({c for _, c, _ in rows})
        if len(self.classes) < 2:
            raise DataSourceError(
                f"{param}: '{root}' has a single class folder ('{self.classes[0]}'): a classifier needs 2 or more "
                "classes. Add a subfolder per class."
            )
        if self.ignored:
            log.warning("%s: %d file(s) without an image extension ignored, e.g. '%s' (images: %s)", param,
                        len(self.ignored), self.ignored[0], ", ".join(IMG_EXTENSIONS))
        lut = {c: i for i, c in enumerate(self.classes)}
        self._index = pd.DataFrame({
            "item": [r[0] for r in rows],
            "label": [lut[r[1]] for r in rows],
            "class_name": [r[1] for r in rows],
            "official_split": [r[2] for r in rows],
        })

    def index(self) -> pd.DataFrame:
        return _check_index(self._index.copy(), self.classes, f"{self.param} '{self.root}'")

    def load_images(self, items, *, min_side=None):
        for item in items:
            yield open_image_file(self.root / item, min_side)

    def file_path(self, item: str) -> Path:
        return self.root / item

    def describe(self) -> str:
        return f"image_folder {self.root}" + (" (official splits)" if self.official else "")


# torchvision datasets: how to build each official split, where torchvision looks for the files
_DIGITS = [str(d) for d in range(10)]
TORCHVISION_DATASETS: dict[str, dict[str, Any]] = {
    "CIFAR10": {
        "splits": {"train": {"train": True}, "test": {"train": False}},
        "layout": "<root>/cifar-10-batches-py/ with data_batch_1 ... data_batch_5, test_batch and batches.meta "
                  "(the extracted cifar-10-python.tar.gz)",
    },
    "CIFAR100": {
        "splits": {"train": {"train": True}, "test": {"train": False}},
        "layout": "<root>/cifar-100-python/ with train, test and meta (the extracted cifar-100-python.tar.gz)",
    },
    "STL10": {
        "splits": {"train": {"split": "train"}, "test": {"split": "test"}},
        "layout": "<root>/stl10_binary/ with train_X.bin, train_y.bin, test_X.bin, test_y.bin, unlabeled_X.bin "
                  "and class_names.txt (the extracted stl10_binary.tar.gz; torchvision checks all of them)",
    },
    "MNIST": {
        "splits": {"train": {"train": True}, "test": {"train": False}},
        "layout": "<root>/MNIST/raw/ with train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte "
                  "and t10k-labels-idx1-ubyte (uncompressed)",
        "classes": _DIGITS,
    },
    "FashionMNIST": {
        "splits": {"train": {"train": True}, "test": {"train": False}},
        "layout": "<root>/FashionMNIST/raw/ with train-images-idx3-ubyte, train-labels-idx1-ubyte, "
                  "t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte (uncompressed)",
    },
    "USPS": {
        "splits": {"train": {"train": True}, "test": {"train": False}},
        "layout": "<root>/usps.bz2 and <root>/usps.t.bz2",
        "classes": _DIGITS,
    },
    "SVHN": {
        "splits": {"train": {"split": "train"}, "test": {"split": "test"}},
        "layout": "<root>/train_32x32.mat and <root>/test_32x32.mat",
        "classes": _DIGITS,
    },
    "Flowers102": {
        "splits": {s: {"split": s} for s in SPLIT_NAMES},
        "layout": "<root>/flowers-102/ with jpg/image_00001.jpg ..., imagelabels.mat and setid.mat",
    },
    "FGVCAircraft": {
        "splits": {s: {"split": s} for s in SPLIT_NAMES},
        "layout": "<root>/fgvc-aircraft-2013b/data/ with images/, variants.txt and images_variant_train.txt, "
                  "images_variant_val.txt, images_variant_test.txt (the extracted fgvc-aircraft-2013b.tar.gz)",
        "options": {"annotation_level": "variant"},
    },
    "DTD": {
        "splits": {s: {"split": s} for s in SPLIT_NAMES},
        "layout": "<root>/dtd/dtd/ with images/<class>/<image>.jpg and labels/train1.txt, val1.txt, test1.txt "
                  "(the extracted dtd-r1.0.1.tar.gz inside <root>/dtd/)",
        "options": {"partition": 1},
    },
}


#: where torchvision downloads a dataset from, for those whose URL is no public attribute of its class
_DOWNLOAD_URLS = {
    "Flowers102": "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/102flowers.tgz",
    "FGVCAircraft": "https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/archives/fgvc-aircraft-2013b.tar.gz",
    "DTD": "https://www.robots.ox.ac.uk/~vgg/data/dtd/download/dtd-r1.0.1.tar.gz",
}


def torchvision_download_url(name: str) -> str | None:
    """The URL torchvision downloads the dataset ``name`` from (its first file), or None."""
    import torchvision.datasets as tvd

    cls = getattr(tvd, name, None)
    if name in ("MNIST", "FashionMNIST") and cls is not None:
        return cls.mirrors[0] + cls.resources[0][0]
    if name in ("USPS", "SVHN") and cls is not None:
        return cls.split_list["train"][0]
    if name in ("CIFAR10", "CIFAR100", "STL10") and cls is not None:
        return cls.url
    return _DOWNLOAD_URLS.get(name)


class TorchvisionSource(ImageSource):
    kind = "torchvision"

    def __init__(self, name: str, root: str | Path, download: bool = False, prefix: str = "data.source", **options) -> None:
        canonical = {k.lower(): k for k in TORCHVISION_DATASETS}.get(str(name).lower())
        if canonical is None:
            raise DataSourceError(
                f"{prefix}.name: unknown torchvision dataset {name!r}; valid names: "
                f"{', '.join(TORCHVISION_DATASETS)}. For another dataset use kind image_folder or csv."
            )
        spec = TORCHVISION_DATASETS[canonical]
        unknown = set(options) - set(spec.get("options", {}))
        if unknown:
            raise DataSourceError(
                f"{prefix}: option(s) {sorted(unknown)} do not apply to torchvision {canonical}; "
                f"valid: {sorted(spec.get('options', {})) or 'none'}."
            )
        self.name, self.spec, self.download, self.prefix = canonical, spec, bool(download), prefix
        self.root = Path(root).expanduser()
        self.options = {**spec.get("options", {}), **options}
        self._datasets: dict[str, Any] = {}
        first = self._dataset(next(iter(spec["splits"])))
        self.classes = list(spec.get("classes") or [str(c) for c in getattr(first, "classes", [])])

    def _dataset(self, split: str):
        ds = self._datasets.get(split)
        if ds is not None:
            return ds
        import torchvision.datasets as tvd

        cls = getattr(tvd, self.name)
        kwargs = {**self.spec["splits"][split], **self.options}
        layout = self.spec["layout"].replace("<root>", str(self.root))
        download = self.download and not offline()  # EVOTUNE_OFFLINE=1: torchvision does not try the network
        if not download and not self.root.exists():
            raise DataSourceError(self._missing_message(layout, f"the folder {self.root} does not exist"))
        if download:
            self.root.mkdir(parents=True, exist_ok=True)
        try:
            ds = cls(str(self.root), download=download, **kwargs)
        except Exception as exc:  # noqa: BLE001 - torchvision raises RuntimeError, OSError, URLError, ...
            cause = " ".join(f"{type(exc).__name__}: {exc}".split())
            raise DataSourceError(self._missing_message(layout, cause)) from exc
        self._datasets[split] = ds
        return ds

    def _missing_message(self, layout: str, cause: str) -> str:
        if self.download and "corrupted" in cause:  # torchvision's MD5 check of a downloaded file
            return (
                f"torchvision {self.name}: a file downloaded into root '{self.root}' ({self.prefix}.root) is corrupt "
                f"or truncated: its MD5 differs from torchvision's ({cause}). It is never used: run again to download "
                f"it again, or copy the files in by hand so that torchvision finds {layout}."
            )
        url = torchvision_download_url(self.name) or "its files"
        if self.download and offline():
            return (
                f"torchvision {self.name} was not found in root '{self.root}' ({self.prefix}.root) ({cause}), and "
                f"this run is switched offline (EVOTUNE_OFFLINE or HF_HUB_OFFLINE is set), so it cannot download "
                f"it: on a machine with internet download {url} and copy the extracted files so that torchvision "
                f"finds {layout}."
            )
        if self.download:
            return (
                f"torchvision {self.name}: could not download or open it in root '{self.root}' "
                f"({self.prefix}.root) ({cause}). {self.prefix}.download: true needs internet access; offline, "
                f"download {url} on a machine with internet and copy the extracted files so that torchvision "
                f"finds {layout}."
            )
        return (
            f"torchvision {self.name} was not found in root '{self.root}' ({self.prefix}.root; "
            f"absolute: '{self.root.resolve()}') ({cause}). torchvision expects {layout}. "
            f"Copy the files there, point {self.prefix}.root at the folder that holds them, or set "
            f"{self.prefix}.download: true (needs internet access)."
        )

    @staticmethod
    def _labels(ds) -> np.ndarray:
        for attr in ("targets", "labels", "_labels"):
            if hasattr(ds, attr) and getattr(ds, attr) is not None:
                v = getattr(ds, attr)
                return np.asarray(v.tolist() if hasattr(v, "tolist") else list(v), dtype=np.int64)
        raise DataSourceError(f"torchvision {type(ds).__name__}: cannot find its labels (no targets/labels attribute).")

    def index(self) -> pd.DataFrame:
        frames = []
        for split in self.spec["splits"]:
            labels = self._labels(self._dataset(split))
            if not self.classes:
                self.classes = [str(i) for i in range(int(labels.max()) + 1)]
            frames.append(pd.DataFrame({
                "item": [f"{split}:{i}" for i in range(len(labels))],
                "label": labels,
                "class_name": [self.classes[y] for y in labels],
                "official_split": split,
            }))
        return _check_index(pd.concat(frames, ignore_index=True), self.classes, f"torchvision {self.name}")

    def load_images(self, items, *, min_side=None):
        for item in items:
            split, _, i = str(item).partition(":")
            if split not in self.spec["splits"] or not i.isdigit():
                raise DataSourceError(
                    f"'{item}' is not an item of torchvision {self.name} (expected '<split>:<index>'); "
                    "rerun the data_processing pipeline from ingest_index."
                )
            ds = self._dataset(split)
            try:
                img, _ = ds[int(i)]
            except Exception as exc:  # noqa: BLE001
                raise DataSourceError(
                    f"torchvision {self.name}: could not read item {item} from '{self.root}' "
                    f"({type(exc).__name__}: {exc}); check or re-extract its files."
                ) from exc
            if not isinstance(img, Image.Image):
                img = Image.fromarray(np.asarray(img))
            yield to_rgb(img)

    def describe(self) -> str:
        return f"torchvision {self.name} ({self.root})"


class CSVSource(ImageSource):
    kind = "csv"

    def __init__(
        self,
        path: str | Path,
        image_col: str,
        label_col: str,
        root: str | Path | None = None,
        extension: str = "",
        split_col: str | None = None,
        prefix: str = "data.source",
    ) -> None:
        self.path = Path(path).expanduser()
        self.prefix = prefix
        if not self.path.is_file():
            raise DataSourceError(
                f"{prefix}.path: the CSV file '{self.path}' (absolute: '{self.path.resolve()}') does not exist."
            )
        try:
            table = pd.read_csv(self.path, dtype=str, keep_default_na=False)
        except Exception as exc:  # noqa: BLE001
            raise DataSourceError(f"{prefix}.path: could not read the CSV file '{self.path}': {exc}") from exc
        for param, col in (("image_col", image_col), ("label_col", label_col), ("split_col", split_col)):
            if col is not None and col not in table.columns:
                raise DataSourceError(
                    f"{prefix}.{param}: the CSV '{self.path}' has no column {col!r}; its columns are "
                    f"{list(table.columns)}."
                )
        self.root = Path(root).expanduser() if root is not None else self.path.parent
        if not self.root.is_dir():
            raise DataSourceError(f"{prefix}.root: the image folder '{self.root}' does not exist.")
        self.extension = extension or ""
        ids = table[image_col].str.strip()
        labels = table[label_col].str.strip()
        empty = np.flatnonzero((ids == "").to_numpy() | (labels == "").to_numpy())
        if len(empty):
            raise DataSourceError(
                f"{prefix}: {len(empty)} row(s) of '{self.path}' have an empty {image_col!r} or {label_col!r} "
                f"(first at data row {empty[0] + 1}); remove them from the CSV."
            )
        dup = ids[ids.duplicated()]
        if len(dup):
            raise DataSourceError(
                f"{prefix}.image_col: {len(dup)} image id(s) of column {image_col!r} in '{self.path}' repeat "
                f"(e.g. {dup.iloc[0]!r}); each image must appear once."
            )
        values = sorted(set(labels))
        try:
            values = [str(v) for v in sorted({int(v) for v in values})]
            labels = labels.map(lambda v: str(int(v)))
        except ValueError:
            pass
        self.classes = values
        lut = {c: i for i, c in enumerate(values)}
        splits = pd.Series([""] * len(table))
        if split_col is not None:
            raw = table[split_col].str.strip().str.lower()
            bad = sorted(set(raw) - set(_SPLIT_ALIASES))
            if bad:
                raise DataSourceError(
                    f"{prefix}.split_col: column {split_col!r} of '{self.path}' has value(s) {bad[:5]}; "
                    "use train/val/test (or training/validation/testing)."
                )
            splits = raw.map(_SPLIT_ALIASES)
        missing = [i for i in ids if not (self.root / f"{i}{self.extension}").is_file()]
        if missing:
            raise DataSourceError(
                f"{prefix}: {len(missing)} of {len(ids)} images listed in '{self.path}' are not in the folder "
                f"'{self.root}' ({prefix}.root), e.g. '{self.root / (missing[0] + self.extension)}'. Check "
                f"{prefix}.root and {prefix}.extension ({self.extension!r}, appended to the ids)."
            )
        self._index = pd.DataFrame({
            "item": ids.to_numpy(), "label": [lut[v] for v in labels],
            "class_name": labels.to_numpy(), "official_split": splits.to_numpy(),
        })

    def index(self) -> pd.DataFrame:
        return _check_index(self._index.copy(), self.classes, f"{self.prefix}.path '{self.path}'")

    def load_images(self, items, *, min_side=None):
        for item in items:
            yield open_image_file(self.root / f"{item}{self.extension}", min_side)

    def file_path(self, item: str) -> Path:
        return self.root / f"{item}{self.extension}"

    def describe(self) -> str:
        return f"csv {self.path} (images in {self.root})"


# --------------------------------------------------------------------------- factory
_KINDS: dict[str, tuple[set[str], set[str]]] = {  # kind -> (required keys, optional keys)
    "embedded_digits": (set(), {"polarity"}),
    "image_folder": ({"path"}, set()),
    "torchvision": ({"name", "root"}, {"download", "annotation_level", "partition"}),
    "csv": ({"path", "image_col", "label_col"}, {"root", "extension", "split_col"}),
}


def make_source(config: dict | None, prefix: str = "data.source") -> ImageSource:
    """The source that ``config`` (the ``data.source`` parameters) describes."""
    if not isinstance(config, dict) or "kind" not in config:
        raise DataSourceError(
            f"{prefix} must be a mapping with a 'kind' (one of {', '.join(_KINDS)}); got {config!r}."
        )
    kind = str(config["kind"])
    if kind not in _KINDS:
        raise DataSourceError(f"{prefix}.kind: unknown kind {kind!r}; valid kinds: {', '.join(_KINDS)}.")
    required, optional = _KINDS[kind]
    opts = {k: v for k, v in config.items() if k != "kind"}
    unknown = sorted(set(opts) - required - optional)
    if unknown:
        raise DataSourceError(
            f"{prefix}: unknown key(s) {', '.join(unknown)} for kind {kind}; valid keys: "
            f"{', '.join(sorted(required | optional)) or 'none'}."
        )
    missing = sorted(required - set(opts))
    if missing:
        raise DataSourceError(f"{prefix}: kind {kind} needs {', '.join(f'{prefix}.{m}' for m in missing)}.")
    if kind == "embedded_digits":
        return EmbeddedDigitsSource(**opts)
    if kind == "image_folder":
        return ImageFolderSource(opts["path"], param=f"{prefix}.path")
    if kind == "torchvision":
        return TorchvisionSource(prefix=prefix, **opts)
    return CSVSource(prefix=prefix, **opts)
