"""Node: classify the images of a folder or a CSV of paths (``predict`` parameters,
parameters_predict.yml) with an exported model.

Every image goes through the training preprocessing (``evotune.data.preprocess``:
decode to 8-bit RGB from any mode, resize the shorter side, centre crop) and the
training normalisation, with the sizes, mean and std the export's metadata records.
Files that cannot be classified (empty, not an image, unreadable, missing) are listed in
``prediction_skipped`` and counted in the log; they never stop the run.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import UnidentifiedImageError

from ...data.errors import DataSourceError
from ...data.preprocess import load_image_file
from ...data.sources import IMG_EXTENSIONS
from ...errors import ParameterError
from ...export import model_from_export
from ...params import require_keys
from ...training import Normalizer, resolve_device

log = logging.getLogger(__name__)

KEYS = ("source", "csv_column", "model_version", "top_k", "batch_size", "device", "decode_workers", "log_every_s")
SKIPPED_COLUMNS = ["file", "problem", "detail"]
_MAX_WARNINGS = 20


def _positive_int(p: dict, key: str, minimum: int) -> int:
    v = p[key]
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise ParameterError(f"predict.{key} must be an integer >= {minimum}; got {v!r}.")
    return v


@dataclass(frozen=True)
class PredictParams:
    source: Path
    csv_column: str
    model_version: str | None
    top_k: int
    batch_size: int
    device: str
    decode_workers: int
    log_every_s: float

    @classmethod
    def from_params(cls, params: Any) -> PredictParams:
        p = require_keys(params, "predict", KEYS)
        if p["source"] in (None, ""):
            raise ParameterError(
                "predict.source is not set: give the folder of images (or the CSV of image paths) to classify, "
                "e.g. `kedro run --pipelines predict --params predict.source=data/01_raw/new_images`."
            )
        source = Path(str(p["source"])).expanduser()
        if not source.exists():
            raise ParameterError(f"predict.source: '{source}' (absolute: '{source.resolve()}') does not exist.")
        if source.is_file() and source.suffix.lower() != ".csv":
            raise ParameterError(f"predict.source: '{source}' is a file but not a .csv; give a folder of images "
                                 "or a CSV file with a column of image paths (predict.csv_column).")
        if not isinstance(p["csv_column"], str) or not p["csv_column"]:
            raise ParameterError(f"predict.csv_column must be a column name; got {p['csv_column']!r}.")
        version = p["model_version"]
        if version is not None and (not isinstance(version, str) or not version.strip()):
            raise ParameterError(f"predict.model_version must be null (the newest export) or a version folder "
                                 f"name such as 2026-11-27T10.00.00.000Z; got {version!r}.")
        log_every = p["log_every_s"]
        if isinstance(log_every, bool) or not isinstance(log_every, (int, float)) or not log_every > 0:
            raise ParameterError(f"predict.log_every_s must be a number > 0; got {log_every!r}.")
        try:
            resolve_device(p["device"], param="predict.device")
        except ValueError as exc:
            raise ParameterError(str(exc)) from exc
        return cls(
            source=source, csv_column=p["csv_column"], model_version=version,
            top_k=_positive_int(p, "top_k", 1), batch_size=_positive_int(p, "batch_size", 1),
            device=str(p["device"]), decode_workers=_positive_int(p, "decode_workers", 0),
            log_every_s=float(log_every),
        )


def list_inputs(p: PredictParams) -> list[tuple[str, Path]]:
    """(name for the table, path) of every file to classify: each non-hidden file under a
    folder (subfolders included, sorted), or each row of the CSV's ``csv_column`` (relative
    paths from the CSV's folder)."""
    src = p.source
    if src.is_dir():
        files = sorted(
            f for f in src.rglob("*")
            if f.is_file() and not any(part.startswith(".") for part in f.relative_to(src).parts)
        )
        return [(f.relative_to(src).as_posix(), f) for f in files]
    try:
        table = pd.read_csv(src, dtype=str, keep_default_na=False)
    except Exception as exc:  # noqa: BLE001
        raise ParameterError(f"predict.source: could not read the CSV file '{src}': {exc}") from exc
    if p.csv_column not in table.columns:
        raise ParameterError(f"predict.csv_column: the CSV '{src}' has no column {p.csv_column!r}; "
                             f"its columns are {list(table.columns)}.")
    out = []
    for name in table[p.csv_column].str.strip():
        path = Path(name).expanduser()
        out.append((name, path if path.is_absolute() else src.parent / path))
    return out


def decode(path: Path, resize: int, crop: int, interpolation: str = "bilinear") -> tuple[np.ndarray | None, str, str]:
    """(uint8 [3, crop, crop] or None, problem, detail) for one file, never raising for a bad file."""
    try:
        if not path.is_file():
            return None, "file not found", str(path)
        if path.stat().st_size == 0:
            return None, "empty file", "0 bytes"
        return load_image_file(path, resize, crop, interpolation), "", ""
    except DataSourceError as exc:
        cause = exc.__cause__ or exc
        detail = f"{type(cause).__name__}: {cause}"
        if isinstance(cause, UnidentifiedImageError) and path.suffix.lower() not in IMG_EXTENSIONS:
            return None, "not an image", detail
        return None, "unreadable image", detail
    except OSError as exc:  # permissions, I/O errors
        return None, "unreadable image", f"{type(exc).__name__}: {exc}"


def _decoded_batches(files: list[tuple[str, Path]], p: PredictParams, resize: int, crop: int,
                     interpolation: str = "bilinear") -> Iterator[list]:
    """Per batch of files, [(name, array or None, problem, detail)]; with decode workers the
    next batch is decoded while the caller runs the model on this one."""
    batches = [files[i:i + p.batch_size] for i in range(0, len(files), p.batch_size)]

    def one(item):
        name, path = item
        return (name, *decode(path, resize, crop, interpolation))

    if p.decode_workers == 0:
        for batch in batches:
            yield [one(item) for item in batch]
        return
    with ThreadPoolExecutor(max_workers=p.decode_workers) as pool:
        pending = [pool.submit(one, item) for item in batches[0]] if batches else []
        for i in range(len(batches)):
            current = pending
            pending = [pool.submit(one, item) for item in batches[i + 1]] if i + 1 < len(batches) else []
            yield [f.result() for f in current]


def predict_images(
    exported_model_weights: dict, exported_model_metadata: dict, predict_params: dict
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Classify every file of ``predict.source``; returns (predictions, skipped files)."""
    p = PredictParams.from_params(predict_params)
    meta = exported_model_metadata
    device = resolve_device(p.device, param="predict.device")
    model = model_from_export(exported_model_weights, meta).to(device)
    pre = meta["preprocessing"]
    resize, crop = int(pre["resize_shorter_side"]), int(pre["center_crop"])
    interpolation = str(pre.get("interpolation", "bilinear"))  # the training's decoding (bicubic for some weights)
    normalize = Normalizer(pre["mean"], pre["std"], device, channels_last=False)
    classes = list(meta["classes"])
    k = min(p.top_k, len(classes))
    if k < p.top_k:
        log.info("predict.top_k is %d but the model has %d classes: top %d", p.top_k, len(classes), k)
    files = list_inputs(p)
    if not files:
        raise ParameterError(f"predict.source: '{p.source}' holds no files to classify.")
    log.info("classifying %d files from %s with %s (%s, exported %s, seed %s) on %s, batches of %d",
             len(files), p.source, meta["architecture"]["name"], f"{len(classes)} classes", meta.get("created"),
             meta.get("selection", {}).get("seed"), device, p.batch_size)

    rows: list[dict] = []
    skipped: list[dict] = []
    t0 = last = time.perf_counter()
    done = 0
    with torch.inference_mode():
        for batch in _decoded_batches(files, p, resize, crop, interpolation):
            good = [(name, arr) for name, arr, _, _ in batch if arr is not None]
            for name, arr, problem, detail in batch:
                if arr is None:
                    skipped.append({"file": name, "problem": problem, "detail": detail})
                    if len(skipped) <= _MAX_WARNINGS:
                        log.warning("skipped %s: %s (%s)", name, problem, detail)
            if good:
                x = torch.from_numpy(np.stack([arr for _, arr in good])).to(device)
                probs = torch.softmax(model(normalize(x)).float(), dim=1)
                top_p, top_i = probs.topk(k, dim=1)
                top_p, top_i = top_p.cpu().tolist(), top_i.cpu().tolist()
                for (name, _), ps, idx in zip(good, top_p, top_i):
                    row = {"file": name, "predicted_class": classes[idx[0]], "probability": ps[0]}
                    for j in range(1, k):
                        row[f"top{j + 1}_class"] = classes[idx[j]]
                        row[f"top{j + 1}_probability"] = ps[j]
                    rows.append(row)
            done += len(batch)
            now = time.perf_counter()
            if now - last >= p.log_every_s and done < len(files):
                last = now
                log.info("predict: %d/%d files (%.0f files/s)", done, len(files), done / (now - t0))

    columns = ["file", "predicted_class", "probability"]
    for j in range(1, k):
        columns += [f"top{j + 1}_class", f"top{j + 1}_probability"]
    predictions = pd.DataFrame(rows, columns=columns)
    skipped_df = pd.DataFrame(skipped, columns=SKIPPED_COLUMNS)
    counts = Counter(s["problem"] for s in skipped)
    why = ", ".join(f"{n} {problem}" for problem, n in sorted(counts.items()))
    log.log(logging.WARNING if skipped else logging.INFO, "predict: classified %d of %d files in %.1fs; skipped %d%s",
            len(rows), len(files), time.perf_counter() - t0, len(skipped),
            f" ({why}; listed in prediction_skipped)" if skipped else "")
    if len(skipped) > _MAX_WARNINGS:
        log.warning("%d more skipped files are listed in prediction_skipped only", len(skipped) - _MAX_WARNINGS)
    return predictions, skipped_df
