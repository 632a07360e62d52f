"""Bad data is found before any training, completely, and reported in one message."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from evotune.data import DataSourceError
from evotune.data.splitting import assign_splits, minimum_class_size
from evotune.pipelines.data_processing.nodes import check_target_data, ingest_index
from evotune.search.config import SearchConfig


def folder(root, counts: dict[str, int]) -> None:
    rng = np.random.default_rng(0)
    for name, n in counts.items():
        (root / name).mkdir(parents=True)
        for i in range(n):
            Image.fromarray((rng.random((20, 20, 3)) * 255).astype(np.uint8)).save(root / name / f"{i}.png")


@pytest.fixture
def data_params(base_parameters):
    """``data_params(root, **kw)``: conf/base's parameters for the image folder ``root``, ``kw`` in `data`."""
    def make(root, **kw) -> dict:
        params = base_parameters()
        params["data"]["source"] = {"kind": "image_folder", "path": str(root)}
        params["data"]["split"].update(train_per_class=None, val_per_class=None)
        params["data"].update(kw)
        return params

    return make


def break_files(root):
    (root / "a" / "0.png").write_bytes(b"")  # zero bytes
    good = (root / "b" / "1.png").read_bytes()
    (root / "b" / "1.png").write_bytes(good[: len(good) // 2])  # truncated
    Image.fromarray(np.zeros((30, 30, 3), np.uint8)).save(root / "a" / "2.jpg", quality=90)
    data = (root / "a" / "2.jpg").read_bytes()
    (root / "a" / "2.jpg").write_bytes(data[:200])  # a corrupt JPEG
    (root / "b" / "notes.txt").write_text("not an image")


def test_every_unreadable_file_is_listed_in_one_message(tmp_path, caplog, data_params):
    root = tmp_path / "imgs"
    folder(root, {"a": 12, "b": 12})
    break_files(root)
    params = data_params(root)
    with caplog.at_level(logging.WARNING), pytest.raises(DataSourceError) as err:
        check_target_data(params["data"], SearchConfig.from_params(params["search"]).n_chunks)
    msg = str(err.value)
    assert "3 of 25 image files cannot be read" in msg
    for name in ("a/0.png", "b/1.png", "a/2.jpg"):
        assert name in msg, name
    assert "empty file (0 bytes)" in msg and "data.skip_unreadable" in msg
    assert "notes.txt" in caplog.text and "1 file(s) without an image extension ignored" in caplog.text


def test_skip_unreadable_leaves_them_out_and_logs_them(tmp_path, caplog, data_params):
    root = tmp_path / "imgs"
    folder(root, {"a": 12, "b": 12})
    break_files(root)
    params = data_params(root, skip_unreadable=True)
    with caplog.at_level(logging.WARNING):
        index = ingest_index(params["data"])
    assert len(index) == 22 and not {"a/0.png", "b/1.png", "a/2.jpg"} & set(index["item"])
    assert "3 of 25 image files left out" in caplog.text
    check_target_data(params["data"], SearchConfig.from_params(params["search"]).n_chunks)  # the rest splits fine


def test_small_classes_are_all_named_with_the_real_minimum(tmp_path, data_params):
    root = tmp_path / "imgs"
    folder(root, {"big": 20, "one": 1, "few": 3})
    params = data_params(root)
    with pytest.raises(DataSourceError) as err:
        check_target_data(params["data"], SearchConfig.from_params(params["search"]).n_chunks)
    msg = str(err.value)
    assert "'one'" in msg and "'few'" in msg and "'big'" not in msg
    n = minimum_class_size(0.2, 0.2, 2)
    assert f"a class needs at least {n} images" in msg
    # and that minimum is real: a class of exactly that many images passes the split and the chunks
    root2 = tmp_path / "imgs2"
    folder(root2, {"x": n, "y": n})
    params = data_params(root2)
    check_target_data(params["data"], SearchConfig.from_params(params["search"]).n_chunks)
    with pytest.raises(DataSourceError):
        folder(tmp_path / "imgs3", {"x": n - 1, "y": n})
        params = data_params(tmp_path / "imgs3")
        check_target_data(params["data"], SearchConfig.from_params(params["search"]).n_chunks)


def test_minimum_class_size_matches_the_split():
    for vf, tf, chunks in ((0.2, 0.2, 1), (0.2, 0.2, 2), (0.1, 0.3, 3), (0.5, 0.1, 2)):
        n = minimum_class_size(vf, tf, chunks)
        df = pd.DataFrame({"item": [str(i) for i in range(n)], "label": 0, "class_name": "x", "official_split": ""})
        df = pd.concat([df, df.assign(item=df["item"] + "b", label=1)])
        out = assign_splits(df, seed=0, val_fraction=vf, test_fraction=tf)
        per = out[out["label"] == 0]["split"].value_counts()
        assert per.get("train", 0) >= chunks and per.get("val", 0) >= chunks
        assign_splits(df, seed=0, val_fraction=vf, test_fraction=tf, n_chunks=chunks)  # exactly the minimum: passes
        # one image fewer per class: assign_splits itself refuses, naming the chunks (the test raises nothing itself)
        small = df[~df["item"].isin({str(n - 1), f"{n - 1}b"})]
        with pytest.raises(DataSourceError, match=r"needed|split is empty"):
            assign_splits(small, seed=0, val_fraction=vf, test_fraction=tf, n_chunks=chunks)
