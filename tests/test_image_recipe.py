"""The weights' own preprocessing (issue 25, item 2): ``data.image`` null is what the backbone's
weights were trained with (torchvision's ``weights.transforms()``, timm's ``resolve_data_config``);
an explicit value wins and a mismatch is reported before any image is decoded; the decoded splits,
the exported metadata and ``predict`` use the same values."""

from __future__ import annotations

import copy
import logging

import numpy as np
import pytest
import torch
import torchvision
from kedro.framework.project import configure_project
from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner
from PIL import Image
from torchvision import transforms as T

from evotune.backbones import ARCHITECTURES, imagenet_weights_path, weights_recipe
from evotune.backbones.weights import torchvision_recipe
from evotune.data.sources import make_source
from evotune.pipelines.data_processing import nodes as data_nodes
from evotune.pipelines.data_processing.nodes import image_options
from evotune.pipelines.predict.nodes import decode


def test_the_registry_matches_every_torchvision_weights_transforms():
    """ArchSpec (what a model built without weights records) and the weights' own transforms agree."""
    checked = 0
    for name, spec in ARCHITECTURES.items():
        if spec.imagenet_weights is None:
            continue
        r = torchvision_recipe(spec)
        assert (spec.resize_size, spec.input_size, spec.interpolation) == (r.resize_size, r.crop_size,
                                                                           r.interpolation), name
        assert spec.mean == pytest.approx(r.mean) and spec.std == pytest.approx(r.std), name
        checked += 1
    assert checked >= 10


def test_each_torchvision_weights_name_brings_its_own_recipe():
    """backbone.weights IMAGENET1K_V1 / IMAGENET1K_V2 / DEFAULT decode as those weights' transforms() (ResNet-50's
    V1 resizes to 256, V2 to 232); a weights URL has no recipe of its own: the architecture's registered values."""
    from torchvision.models import ResNet50_Weights

    for name in ("IMAGENET1K_V1", "IMAGENET1K_V2", "DEFAULT"):
        tf = ResNet50_Weights[name].transforms()
        r = weights_recipe("resnet50", name)
        assert (r.resize_size, r.crop_size) == (tf.resize_size[0], tf.crop_size[0]), name
    assert weights_recipe("resnet50", "IMAGENET1K_V1").resize_size != weights_recipe("resnet50", "IMAGENET1K_V2").resize_size
    url = weights_recipe("resnet50", "http://127.0.0.1:1/models/resnet50-0123abcd.pth")
    assert (url.resize_size, url.crop_size) == (ARCHITECTURES["resnet50"].resize_size, ARCHITECTURES["resnet50"].input_size)


@pytest.mark.parametrize("arch, expected", [
    ("efficientnet_b0", (256, 224, "bicubic")),
    ("swin_t", (232, 224, "bicubic")),
    ("resnet50", (232, 224, "bilinear")),
    ("inception_v3", (342, 299, "bilinear")),
])
def test_imagenet_weights_bring_their_recipe(arch, expected):
    r = weights_recipe(arch, "imagenet")
    assert (r.resize_size, r.crop_size, r.interpolation) == expected
    assert "transforms()" in r.origin


def test_without_pretrained_weights_the_architecture_sets_the_size():
    r = weights_recipe("resnet10", "source")
    assert (r.resize_size, r.crop_size, r.interpolation) == (32, 32, "bilinear")
    assert weights_recipe("vit_b_16", "none").crop_size == 224


def _image_params(data: dict, **image) -> dict:
    return {**data, "image": {"resize_size": None, "crop_size": None, "interpolation": None, **image}}


def test_null_is_the_weights_recipe_and_an_explicit_value_wins_with_a_warning(base_parameters, caplog):
    data = base_parameters()["data"]
    backbone = {**base_parameters()["backbone"], "arch": "efficientnet_b0", "weights": "imagenet"}
    with caplog.at_level(logging.WARNING):
        s = image_options(_image_params(data), backbone)
    assert (s.resize_size, s.crop_size, s.interpolation) == (256, 224, "bicubic")
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    with caplog.at_level(logging.WARNING):
        s = image_options(_image_params(data, resize_size=240, interpolation="bilinear"), backbone)
    assert (s.resize_size, s.crop_size, s.interpolation) == (240, 224, "bilinear")  # explicit values win
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "resize_size 240 (the weights': 256)" in warning and "interpolation bilinear (the weights': bicubic)" in warning
    assert "efficientnet_b0" in warning and "null" in warning


def test_a_mismatch_is_reported_before_any_image_is_decoded(base_parameters, caplog, monkeypatch):
    data = _image_params(base_parameters()["data"], crop_size=200)
    backbone = {**base_parameters()["backbone"], "arch": "resnet50", "weights": "imagenet"}
    seen = []

    def no_decoding(*args, **kwargs):
        seen.append([r.getMessage() for r in caplog.records if r.levelno == logging.WARNING])
        raise RuntimeError("stop before decoding")

    monkeypatch.setattr(data_nodes, "decode_split", no_decoding)
    index = data_nodes.split_dataset(data_nodes.ingest_index(data), data)
    with caplog.at_level(logging.WARNING), pytest.raises(RuntimeError, match="stop before decoding"):
        data_nodes.preprocess_splits(index, data, backbone)
    assert any("crop_size 200 (the weights': 224)" in m for m in seen[0])


def _image_folder(root, n_per_class=10) -> None:
    rng = np.random.default_rng(3)
    for c, name in enumerate(("ant", "bee")):
        (root / name).mkdir(parents=True)
        for i in range(n_per_class):
            h, w = 260 + 7 * i, 300 - 5 * i  # other sizes than the recipe's: a real resize and crop
            a = (rng.random((h, w, 3)) * 60).astype(np.uint8)
            a[:, : w // 2, c] += 180
            a[h // 3 : h // 2] += 40  # edges: bicubic and bilinear differ on them
            Image.fromarray(a).save(root / name / f"{i}.png")


class KeptMemoryDataset(MemoryDataset):
    """Keeps its data after the run (the runner releases intermediate datasets)."""

    def _release(self) -> None:
        pass


def test_a_run_with_imagenet_style_weights_decodes_with_their_recipe(tmp_path, base_parameters):
    """The ``pretrained`` pipeline up to the backbone, with EfficientNet-B0 "ImageNet" weights (a
    generated file where the loader looks; nothing is downloaded) and ``data.image`` left null:
    the images are decoded once with the weights' recipe, bicubic as its transforms() say, and
    predict decodes a file the same way."""
    from evotune.pipeline_registry import register_pipelines

    torch_home = tmp_path / "torch"
    path = imagenet_weights_path("efficientnet_b0", torch_home)
    path.parent.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(torchvision.models.efficientnet_b0(weights=None).state_dict(), path)
    folder = tmp_path / "images"
    _image_folder(folder)

    params = base_parameters()
    data = copy.deepcopy(params["data"])
    data["source"] = {"kind": "image_folder", "path": str(folder)}
    assert data["image"] == {"resize_size": None, "crop_size": None, "interpolation": None}  # conf/base
    backbone = {**params["backbone"], "arch": "efficientnet_b0", "weights": "imagenet", "torch_home": str(torch_home)}

    configure_project("evotune")
    pipe = register_pipelines()["pretrained"].to_nodes("load_pretrained_backbone")
    assert {n.name for n in pipe.nodes} == {"ingest_index", "split_dataset", "preprocess_splits",
                                            "load_pretrained_backbone"}
    catalog = DataCatalog()
    catalog["params:data"] = data
    catalog["params:backbone"] = backbone
    catalog["params:source_pretraining"] = params["source_pretraining"]
    for name in pipe.all_outputs():
        catalog[name] = KeptMemoryDataset(copy_mode="assign")
    SequentialRunner().run(pipe, catalog)

    train, ckpt = catalog.load("target_train"), catalog.load("backbone")
    pre = train.preprocessing
    assert (pre["resize_shorter_side"], pre["center_crop"], pre["interpolation"]) == (256, 224, "bicubic")
    assert "EfficientNet_B0_Weights.IMAGENET1K_V1.transforms()" in pre["origin"]
    assert train.images.shape[1:] == (3, 224, 224)
    assert len(train.labels) == 12  # caps auto on a user's folder: every image (2 x (10 - 2 val - 2 test))
    assert ckpt.input_size == 224 and list(ckpt.mean) == pytest.approx(weights_recipe("efficientnet_b0").mean)

    weights_tf = torchvision.models.get_weight("EfficientNet_B0_Weights.IMAGENET1K_V1").transforms()
    tf = T.Compose([T.Resize(weights_tf.resize_size, interpolation=weights_tf.interpolation),
                    T.CenterCrop(weights_tf.crop_size), T.PILToTensor()])
    source = make_source(data["source"])
    bilinear_differs = False
    for k, item in enumerate(train.items[:4]):
        file = source.file_path(item)
        with Image.open(file) as img:
            expected = tf(img.convert("RGB"))
            bilinear = T.Compose([T.Resize(256), T.CenterCrop(224), T.PILToTensor()])(img.convert("RGB"))
        assert torch.equal(train.images[k], expected), item  # the weights' own transforms, bit for bit
        bilinear_differs |= not torch.equal(expected, bilinear)
        arr, problem, _ = decode(file, pre["resize_shorter_side"], pre["center_crop"], pre["interpolation"])
        assert problem == "" and torch.equal(torch.from_numpy(arr.copy()), train.images[k])  # predict decodes alike
    assert bilinear_differs  # the test can tell bicubic from bilinear


def test_the_source_model_sets_the_size_for_source_weights(base_parameters):
    """``backbone.weights: source`` (the default pipeline): the source model's rendered images."""
    params = base_parameters()
    source = {**params["source_pretraining"], "data": {**params["source_pretraining"]["data"], "image_size": 40}}
    s = image_options(_image_params(params["data"]), params["backbone"], source)
    assert (s.resize_size, s.crop_size, s.interpolation) == (40, 40, "bilinear") and "source model" in s.origin


def test_a_complete_explicit_data_image_is_still_checked_against_the_weights(base_parameters, caplog):
    backbone = {**base_parameters()["backbone"], "arch": "swin_t", "weights": "imagenet"}
    data = _image_params(base_parameters()["data"], resize_size=256, crop_size=224, interpolation="bilinear")
    with caplog.at_level(logging.WARNING):
        s = image_options(data, backbone)
    assert (s.resize_size, s.crop_size, s.interpolation) == (256, 224, "bilinear")
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "resize_size 256 (the weights': 232)" in warning and "interpolation bilinear (the weights': bicubic)" in warning
    # a checkpoint that cannot be read leaves complete explicit values alone
    s = image_options(data, {**backbone, "arch": "resnet18", "weights": "/nonexistent/checkpoint.pt"})
    assert (s.resize_size, s.crop_size, s.interpolation) == (256, 224, "bilinear") and s.origin == "data.image"
