"""The predict pipeline's node: bad files reported and skipped, any image mode converted as in
training, predictions equal to the trained model's, folder and CSV sources, CPU and GPU."""

from __future__ import annotations

import io
import logging

import numpy as np
import pandas as pd
import pytest
import torch
from exported import save_png
from PIL import Image

from evotune.pipelines.predict.nodes import PredictParams, predict_images
from evotune.validation import ParameterError

PARAMS = {"source": None, "csv_column": "path", "model_version": None, "top_k": 3, "batch_size": 4,
          "device": "cpu", "decode_workers": 2, "log_every_s": 10}


def _gray(img: torch.Tensor) -> np.ndarray:
    """A uint8 [3, S, S] image as one 8-bit gray channel."""
    return np.asarray(Image.fromarray(img.permute(1, 2, 0).numpy(), "RGB").convert("L"))


@pytest.fixture
def folder(resnet10_export, tmp_path):
    """Good PNGs of test images, the same image as 16-bit, 8-bit gray and RGBA files, and bad files."""
    images = resnet10_export.test.images
    root = tmp_path / "new_images"
    save_png(images[:9], root / "good")
    gray = _gray(images[9])
    (root / "modes").mkdir()
    Image.fromarray(gray.astype(np.uint16) * 257).save(root / "modes" / "gray16.png")  # mode I;16
    assert Image.open(root / "modes" / "gray16.png").mode.startswith("I")
    Image.fromarray(gray, "L").save(root / "modes" / "gray8.png")
    rgba = np.concatenate([images[10].permute(1, 2, 0).numpy(), np.full((32, 32, 1), 255, np.uint8)], axis=2)
    Image.fromarray(rgba, "RGBA").save(root / "modes" / "rgba.png")
    jpeg = io.BytesIO()
    Image.fromarray(images[11].permute(1, 2, 0).numpy(), "RGB").save(jpeg, format="JPEG")
    (root / "bad").mkdir()
    (root / "bad" / "corrupt.jpg").write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 2])  # truncated
    (root / "bad" / "garbage.png").write_bytes(b"\x89PNG not really")
    (root / "bad" / "notes.txt").write_text("not an image")
    (root / "bad" / "empty.png").write_bytes(b"")
    (root / ".hidden.png").write_bytes(b"")  # hidden files are not inputs
    return root


def _run(export, **overrides):
    return predict_images(export.weights, export.metadata, {**PARAMS, **overrides})


def test_folder_with_bad_files_and_odd_modes(resnet10_export, folder, caplog):
    caplog.set_level(logging.INFO)
    pred, skipped = _run(resnet10_export, source=str(folder))
    assert dict(zip(skipped["file"], skipped["problem"])) == {
        "bad/corrupt.jpg": "unreadable image", "bad/garbage.png": "unreadable image",
        "bad/notes.txt": "not an image", "bad/empty.png": "empty file",
    }
    assert list(pred.columns) == ["file", "predicted_class", "probability", "top2_class", "top2_probability",
                                  "top3_class", "top3_probability"]
    assert len(pred) == 12 and set(pred["file"]) == {f"good/img_{i:03d}.png" for i in range(9)} | {
        "modes/gray16.png", "modes/gray8.png", "modes/rgba.png"}
    log = caplog.text
    assert "skipped 4 (1 empty file, 1 not an image, 2 unreadable image" in log and "bad/notes.txt" in log

    # the good images: exactly the trained model's predictions on the test split
    images = resnet10_export.test.images
    logits = resnet10_export.project_logits(images)
    classes = resnet10_export.metadata["classes"]
    good = pred.set_index("file")
    probs = torch.softmax(logits, 1)
    for i in range(9):
        row = good.loc[f"good/img_{i:03d}.png"]
        assert row["predicted_class"] == classes[int(logits[i].argmax())]
        assert row["probability"] == pytest.approx(float(probs[i].max()), abs=1e-5)
        assert row["probability"] >= row["top2_probability"] >= row["top3_probability"]
    # 16-bit and 8-bit gray both become the same 8-bit gray RGB image; opaque RGBA is its RGB
    gray = torch.from_numpy(np.repeat(_gray(images[9])[None], 3, axis=0))[None]
    expected_gray = classes[int(resnet10_export.project_logits(gray).argmax())]
    assert good.loc["modes/gray16.png", "predicted_class"] == good.loc["modes/gray8.png", "predicted_class"] == expected_gray
    assert good.loc["modes/gray16.png", "probability"] == pytest.approx(good.loc["modes/gray8.png", "probability"])
    assert good.loc["modes/rgba.png", "predicted_class"] == classes[int(logits[10].argmax())]


def test_csv_of_paths_and_progress(resnet10_export, folder, caplog):
    caplog.set_level(logging.INFO)
    csv = folder / "list.csv"
    pd.DataFrame({"image": ["good/img_000.png", str(folder / "good" / "img_001.png"), "gone.png",
                            "bad/notes.txt"]}).to_csv(csv, index=False)
    pred, skipped = _run(resnet10_export, source=str(csv), csv_column="image", top_k=1, batch_size=1,
                         decode_workers=0, log_every_s=1e-9)
    assert pred["file"].tolist() == ["good/img_000.png", str(folder / "good" / "img_001.png")]
    assert list(pred.columns) == ["file", "predicted_class", "probability"]
    assert skipped["problem"].tolist() == ["file not found", "not an image"]
    assert "predict: 1/4 files" in caplog.text  # progress lines


def test_top_k_is_capped_at_the_number_of_classes(resnet10_export, folder):
    pred, _ = _run(resnet10_export, source=str(folder / "good"), top_k=50)
    assert "top4_class" in pred.columns and "top5_class" not in pred.columns


def test_a_timm_export_predicts_like_the_trained_model(timm_export, tmp_path, caplog):
    """predict builds the timm model the metadata names and loads the safetensors weights into it."""
    caplog.set_level(logging.INFO)
    images = timm_export.test.images
    save_png(images, tmp_path / "new")
    pred, skipped = _run(timm_export, source=str(tmp_path / "new"), top_k=2)
    assert skipped.empty and len(pred) == len(images)
    assert "with timm/resnet10t" in caplog.text
    logits = timm_export.project_logits(images)
    classes = timm_export.metadata["classes"]
    assert pred["predicted_class"].tolist() == [classes[int(i)] for i in logits.argmax(1)]
    np.testing.assert_allclose(pred["probability"], torch.softmax(logits, 1).max(1).values.numpy(), atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")
def test_on_the_gpu_the_predictions_are_the_cpu_ones(resnet10_export, folder):
    cpu, _ = _run(resnet10_export, source=str(folder))
    gpu, skipped = _run(resnet10_export, source=str(folder), device="cuda")
    assert len(skipped) == 4
    assert gpu["predicted_class"].tolist() == cpu["predicted_class"].tolist()
    np.testing.assert_allclose(gpu["probability"], cpu["probability"], atol=1e-3)


@pytest.mark.parametrize("change, message", [
    ({"source": None}, "predict.source is not set"),
    ({"source": "/nonexistent/images"}, "/nonexistent/images"),
    ({"top_k": 0}, "predict.top_k"),
    ({"batch_size": "64"}, "predict.batch_size"),
    ({"device": "tpu:0"}, "predict.device"),
    ({"decode_workers": -1}, "predict.decode_workers"),
    ({"model_version": ""}, "predict.model_version"),
    ({"log_every_s": 0}, "predict.log_every_s"),
])
def test_bad_predict_parameters_name_the_parameter(tmp_path, change, message):
    with pytest.raises(ParameterError, match=message):
        PredictParams.from_params({**PARAMS, "source": str(tmp_path), **change})


def test_missing_predict_key_and_non_csv_file(tmp_path):
    params = {**PARAMS, "source": str(tmp_path)}
    del params["top_k"]
    with pytest.raises(ParameterError, match="Missing parameter.*predict.top_k"):
        PredictParams.from_params(params)
    (tmp_path / "x.txt").write_text("x")
    with pytest.raises(ParameterError, match="not a .csv"):
        PredictParams.from_params({**PARAMS, "source": str(tmp_path / "x.txt")})
