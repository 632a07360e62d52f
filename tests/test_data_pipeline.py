"""One-time decoding (decode_split) and the data_processing pipeline's nodes in sequence."""

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from evotune.data import DataSourceError, decode_split
from evotune.data.embedded import FEW_LABEL_CAPS
from evotune.data.sources import ImageSource
from evotune.data.split import Split
from evotune.data.splitting import search_chunks
from evotune.errors import EvotuneError
from evotune.lineage import dataset_fingerprint
from evotune.pipelines.data_processing import create_pipeline
from evotune.pipelines.data_processing.nodes import ingest_index, preprocess_splits, split_dataset
from evotune.search.config import SearchConfig

CONF = Path(__file__).resolve().parents[1] / "conf" / "base"


class ArraySource(ImageSource):
    """Images held in memory; records how many items each load_images call asked for."""

    kind = "array"

    def __init__(self, images):
        self.images = images
        self.classes = ["a", "b"]
        self.calls = []

    def load_images(self, items, *, min_side=None):
        items = list(items)
        self.calls.append(len(items))
        for it in items:
            yield self.images[int(it)]


def test_decode_split_centre_crop_without_resize():
    cols = np.tile((np.arange(9) * 10).astype(np.uint8), (5, 1))  # 9 wide, 5 high, value = 10 * column
    img = Image.fromarray(np.stack([cols, cols + 1, cols + 2], axis=-1), "RGB")
    src = ArraySource([img])
    out = decode_split(src, pd.DataFrame({"item": ["0"], "label": [1]}), resize_size=5, crop_size=5)
    assert out.images.shape == (1, 3, 5, 5) and out.images.dtype == torch.uint8
    assert out.images[0, 0, 0].tolist() == [20, 30, 40, 50, 60]  # columns 2..6
    assert out.images[0, 2, 4].tolist() == [22, 32, 42, 52, 62]
    assert out.labels.tolist() == [1]
    assert out.classes == ["a", "b"] and out.items == ["0"]


def test_decode_split_matches_torchvision_resize_and_centre_crop():
    from torchvision import transforms

    rng = np.random.default_rng(0)
    imgs = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in ((37, 23), (20, 44), (30, 30), (9, 7), (50, 21))]
    src = ArraySource(imgs)
    rows = pd.DataFrame({"item": [str(i) for i in range(5)], "label": [0, 1, 0, 1, 0]})
    out = decode_split(src, rows, resize_size=16, crop_size=12, batch=2)
    assert out.images.shape == (5, 3, 12, 12)
    assert src.calls == [2, 2, 1]  # decoded two at a time, never the whole split at once
    ref = transforms.Compose([transforms.Resize(16), transforms.CenterCrop(12), transforms.PILToTensor()])
    for i, img in enumerate(imgs):
        assert torch.equal(out.images[i], ref(img)), i


def test_predict_decodes_a_file_exactly_as_the_training_split(tmp_path):
    """One preprocessing: load_image_file (predict) gives decode_split's bytes for the same file,
    and the split records what was done (the export's metadata copies it)."""
    from evotune.data import make_source
    from evotune.data.preprocess import load_image_file

    rng = np.random.default_rng(1)
    files = {"a/big.jpg": Image.fromarray(rng.integers(0, 256, (300, 420, 3), dtype=np.uint8)),  # JPEG draft path
             "a/gray16.png": Image.fromarray(rng.integers(0, 65536, (40, 30), dtype=np.uint16)),
             "b/palette.png": Image.fromarray(rng.integers(0, 256, (25, 33, 3), dtype=np.uint8)).convert("P"),
             "b/rgba.png": Image.fromarray(rng.integers(0, 256, (20, 20, 4), dtype=np.uint8), "RGBA")}
    for name, img in files.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        img.save(tmp_path / name)
    source = make_source({"kind": "image_folder", "path": str(tmp_path)})
    index = source.index()
    out = decode_split(source, index[["item", "label"]], resize_size=24, crop_size=16)
    for i, item in enumerate(out.items):
        assert np.array_equal(load_image_file(tmp_path / item, 24, 16), out.images[i].numpy()), item
    assert out.preprocessing["resize_shorter_side"] == 24 and out.preprocessing["center_crop"] == 16
    assert out.preprocessing["interpolation"] == "bilinear"


def test_decode_split_rejects_crop_larger_than_resize():
    with pytest.raises(DataSourceError, match="data.image.crop_size"):
        decode_split(ArraySource([]), pd.DataFrame({"item": [], "label": []}), resize_size=16, crop_size=32)


def test_pipeline_nodes_on_the_embedded_default(tmp_path, base_parameters):
    params = yaml.safe_load((CONF / "parameters_data_processing.yml").read_text())["data"]
    assert params["source"]["kind"] == "embedded_digits"
    search = SearchConfig.from_params({**base_parameters()["search"], "train_split_pct": 0.5,
                                       "chunk_seed": params["split"]["seed"]})

    # through the project's catalog entries (Parquet tables and typed torch files), in tmp_path
    from kedro.io import DataCatalog

    catalog_cfg = yaml.safe_load((CONF / "catalog_data_processing.yml").read_text())
    for entry in catalog_cfg.values():
        entry["filepath"] = str(tmp_path / Path(entry["filepath"]).name)
    catalog = DataCatalog.from_config(catalog_cfg)

    raw = ingest_index(params)
    assert len(raw) == 1797 and list(raw.columns) == ["item", "label", "class_name", "official_split"]
    catalog.save("target_index_raw", raw)
    index = split_dataset(catalog.load("target_index_raw"), params)
    catalog.save("target_index", index)
    pd.testing.assert_frame_equal(catalog.load("target_index"), index)  # types and values kept
    index = catalog.load("target_index")
    per = index.groupby(["split", "label"]).size()
    caps = FEW_LABEL_CAPS  # data.split caps auto: the embedded task's few-label caps
    assert params["split"]["train_per_class"] == params["split"]["val_per_class"] == "auto"
    assert (per["train"] == caps["train_per_class"]).all()
    assert (per["val"] == caps["val_per_class"]).all()
    assert per["test"].sum() == 1797 - 10 * (caps["train_per_class"] + caps["val_per_class"])

    train, val, test = preprocess_splits(index, params, base_parameters()["backbone"],
                                         base_parameters()["source_pretraining"])
    size = 32  # data.image null: the embedded task's resnet10 (source weights) is 32 px
    n_train, n_val = 10 * caps["train_per_class"], 10 * caps["val_per_class"]
    for split, n in ((train, n_train), (val, n_val), (test, 1797 - n_train - n_val)):
        assert split.images.shape == (n, 3, size, size) and split.images.dtype == torch.uint8
        assert split.labels.dtype == torch.int64
        assert split.classes == [str(d) for d in range(10)] and len(split.items) == n
    # the search cuts train and val into its chunks (here 2: search.train_split_pct 0.5)
    train_chunks, val_chunks = search_chunks(train, val, n_chunks=search.n_chunks, seed=search.chunk_seed)
    assert sorted(train_chunks.unique().tolist()) == [0, 1] and sorted(val_chunks.unique().tolist()) == [0, 1]
    assert torch.bincount(train.labels[train_chunks == 0]).tolist() == [caps["train_per_class"] // 2] * 10
    assert not set(train.items) & set(val.items) and not set(val.items) & set(test.items)

    assert train.dataset == val.dataset == test.dataset == dataset_fingerprint(index)
    assert train.dataset_name.startswith("embedded_digits") and train.preprocessing["center_crop"] == size
    assert train.preprocessing["interpolation"] == "bilinear" and "source model" in train.preprocessing["origin"]

    catalog.save("target_train", train)
    loaded = catalog.load("target_train")  # torch.load(weights_only=True)
    assert isinstance(loaded, Split)
    for f in dataclasses.fields(Split):
        a, b = getattr(loaded, f.name), getattr(train, f.name)
        assert torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b, f.name
    [path] = (tmp_path / "target_train.pt").glob("*/target_train.pt")  # versioned
    assert isinstance(torch.load(path, weights_only=True), dict)  # plain data on disk


def test_index_tables_keep_their_types_through_parquet(tmp_path):
    """Ids that look like numbers stay strings, empty strings stay empty, labels stay ints: no
    load_args are needed (the CSV tables needed dtype and keep_default_na)."""
    from kedro.io import DataCatalog

    catalog_cfg = yaml.safe_load((CONF / "catalog_data_processing.yml").read_text())
    for name in ("target_index_raw", "target_index"):
        entry = catalog_cfg[name]
        assert entry["type"] == "pandas.ParquetDataset" and "load_args" not in entry
        entry["filepath"] = str(tmp_path / Path(entry["filepath"]).name)
    catalog = DataCatalog.from_config({k: catalog_cfg[k] for k in ("target_index_raw", "target_index")})
    raw = pd.DataFrame({"item": ["001", "2", "NA", "nan"], "label": [0, 1, 0, 1],
                        "class_name": ["0", "", "None", "b"], "official_split": ["", "", "", ""]})
    catalog.save("target_index_raw", raw)
    back = catalog.load("target_index_raw")
    assert back["item"].tolist() == ["001", "2", "NA", "nan"] and back["class_name"].tolist() == ["0", "", "None", "b"]
    assert back["official_split"].tolist() == [""] * 4 and back["label"].dtype == np.int64
    assert dataset_fingerprint(back) == dataset_fingerprint(raw)


def test_dataset_fingerprint_is_a_function_of_the_index_content():
    index = pd.DataFrame({"item": ["a", "b", "c"], "label": [0, 1, 1], "class_name": ["x", "y", "y"],
                          "official_split": ["", "", ""], "split": ["train", "val", "test"], "chunk": [0, 0, -1]})
    fp = dataset_fingerprint(index)
    assert fp == dataset_fingerprint(index.iloc[::-1].reset_index(drop=True))  # row order does not matter
    assert fp == dataset_fingerprint(index.drop(columns="official_split"))  # nor columns it does not hash
    assert fp != dataset_fingerprint(index.assign(chunk=[1, 0, -1]))
    assert fp != dataset_fingerprint(index.assign(item=["a", "b", "d"]))


def test_every_class_needs_images():
    """The data stage checks the labels (the backbone reads the class count from the split)."""
    from evotune.pipelines.data_processing.nodes import check_labels

    check_labels(pd.DataFrame({"label": [1, 0, 2, 1]}), ["a", "b", "c"])
    with pytest.raises(DataSourceError, match=r"Target labels must be 0\.\.2.*no images of class\(es\) 1 \('b'\)"):
        check_labels(pd.DataFrame({"label": [0, 2, 2]}), ["a", "b", "c"])
    with pytest.raises(DataSourceError, match=r"no images of class\(es\) 2 \('c'\)"):
        check_labels(pd.DataFrame({"label": [0, 1]}), ["a", "b", "c"])
    with pytest.raises(DataSourceError, match=r"labels \[3\] outside 0\.\.2"):
        check_labels(pd.DataFrame({"label": [0, 1, 2, 3]}), ["a", "b", "c"])


def test_pipeline_shape():
    pipe = create_pipeline()
    assert [n.name for n in pipe.nodes] == ["ingest_index", "split_dataset", "preprocess_splits"]
    assert pipe.inputs() == {"params:data", "params:backbone", "params:source_pretraining"}
    assert pipe.outputs() == {"target_train", "target_val", "target_test"}


def test_check_data_params_names_the_bad_key(base_parameters):
    from evotune.pipelines.data_processing.nodes import check_data_params

    good = base_parameters()["data"]
    backbone = base_parameters()["backbone"]
    check_data_params(good, backbone)
    split = good["split"]
    for bad, key in (
        ({**good, "image": {"resize_size": 16, "crop_size": 32, "interpolation": None}}, "data.image.crop_size"),
        ({**good, "image": {"resize_size": 16, "crop_size": 32}}, "data.image.interpolation"),
        ({**good, "image": {"resize_size": 40, "crop_size": None, "interpolation": "nearest"}},
         "data.image.interpolation must be one of bilinear, bicubic"),
        ({**good, "split": {**split, "train_per_class": "all"}}, "data.split.train_per_class must be auto"),
        ({**good, "split": {**split, "val_fraction": 1.5}}, "data.split.val_fraction"),
        ({**good, "split": {**split, "train_per_clas": 5}}, "train_per_clas"),
        ({**good, "split": {**split, "val_per_class": 0}}, "data.split.val_per_class"),
        ({**good, "split": {**split, "seed": "abc"}}, "data.split.seed must be an integer"),
        ({k: v for k, v in good.items() if k != "split"}, "data.split"),
        ({k: v for k, v in good.items() if k != "source"}, "data.source"),
    ):
        with pytest.raises(EvotuneError, match=key.replace(".", r"\.")):
            check_data_params(bad, backbone)
