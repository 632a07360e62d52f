"""The `paper` Kedro environment: every one of the 9 datasets x 4 architectures resolves to the paper's
settings, every parameter the pipelines read exists, and a setting that cannot run here fails fast."""


import pytest

from evotune.backbones import get_arch
from evotune.methods import METHODS, check_compare_params
from evotune.paper_setting import PaperSettingError, check_paper_setting, paper_setting_problems
from evotune.search.config import SearchConfig
from evotune.training import TrainConfig

SOURCES = {
    "flowers102": ("torchvision", "Flowers102"),
    "fgvc_aircraft": ("torchvision", "FGVCAircraft"),
    "isic2020": ("csv", None),
    "dtd": ("torchvision", "DTD"),
    "cifar10": ("torchvision", "CIFAR10"),
    "stl10": ("torchvision", "STL10"),
    "mnist": ("torchvision", "MNIST"),
    "usps": ("torchvision", "USPS"),
    "svhn": ("torchvision", "SVHN"),
}
PAPER_DATASETS = tuple(SOURCES)  # SPEC section 5: the paper's 9 datasets and 4 architectures
PAPER_ARCHS = ("resnet50", "densenet121", "vgg19", "inception_v3")


def lookup(params: dict, dotted: str):
    node = params
    for part in dotted.split("."):
        node = node[part]
    return node


@pytest.fixture(scope="module")
def pipelines(project_copy):
    from kedro.framework.project import pipelines as registry
    from kedro.framework.startup import bootstrap_project

    bootstrap_project(project_copy)
    return {name: registry[name] for name in ("pretrained", "compare") if name in registry}


#: compare methods of SPEC section 8 (beyond the papers), not in the paper environment
BEYOND_THE_PAPERS = {"nsga2", "from_scratch", "biotune_confirmed", "biotune_parsimonious"}


def test_every_paper_setting_resolves(pipelines, load_params):
    assert "pretrained" in pipelines
    needed = {i[len("params:"):] for p in pipelines.values() for i in p.inputs() if i.startswith("params:")}
    default = load_params()
    assert (default["paper"]["dataset"], default["paper"]["arch"]) == ("flowers102", "resnet50")
    assert set(default["paper"]["datasets"]) == set(PAPER_DATASETS)
    assert set(default["paper"]["archs"]) == set(PAPER_ARCHS)
    for dataset in PAPER_DATASETS:
        for arch in PAPER_ARCHS:
            p = load_params({"paper": {"dataset": dataset, "arch": arch}})
            where = f"{dataset} x {arch}"
            kind, name = SOURCES[dataset]
            src = p["data"]["source"]
            assert src == p["paper"]["datasets"][dataset] and src["kind"] == kind, where  # replaced, not merged
            if kind == "torchvision":
                assert src["name"] == name and src["download"] is True, where  # downloaded on first use
            else:
                assert {"path", "image_col", "label_col", "root", "extension"} <= set(src), where
            assert p["backbone"] == {"arch": arch, "weights": "imagenet", "head_seed": 0, "torch_home": None,
                                     "num_classes": None}
            crop = 299 if arch == "inception_v3" else 224
            assert p["data"]["image"] == {"resize_size": 342 if crop == 299 else 232, "crop_size": crop,
                                              "interpolation": "bilinear"}, where
            assert get_arch(arch).input_size == crop
            sp = SearchConfig.from_params(p["search"])
            assert (sp.population, sp.elite, sp.generations, sp.seeds) == (10, 3, 10, (684, 559, 629))
            assert sp.evaluations == 140 and sp.train_split_pct == 0.5
            assert sp.study_name == f"biotune-{dataset}-{arch}"
            cfg = TrainConfig.from_params(p["training"])
            assert (cfg.epochs, cfg.patience, cfg.batch_size, cfg.eval_batch_size, cfg.base_lr) == (30, 3, 96, 64, 1e-3)
            assert cfg.frozen_bn == "train"  # SPEC section 4b: frozen blocks follow train mode
            assert p["retrain"]["seeds"] == [684, 559, 629] == p["compare"]["seeds"]
            check_compare_params(p["compare"])
            # every baseline of SPEC section 6; the methods beyond the papers (NSGA-II, the pick rules, training
            # from scratch: SPEC section 8) are the user's choice there
            assert set(p["compare"]["methods"]) == set(METHODS) - BEYOND_THE_PAPERS
            for key in needed:  # every parameter the pipelines read is there
                lookup(p, key)
            assert paper_setting_problems(p, check_files=False) == [], where


def test_base_environment_is_untouched(load_params):
    p = load_params(env="local")
    assert "paper" not in p and p["backbone"]["arch"] == "resnet10"
    assert TrainConfig.from_params(p["training"]).frozen_bn == "eval"


def test_unknown_names_are_reported_with_the_valid_ones(load_params):
    p = load_params({"paper": {"dataset": "imagenet", "arch": "resnet51"}})
    assert p["data"]["source"] is None
    with pytest.raises(PaperSettingError) as err:
        check_paper_setting(p)
    msg = str(err.value)
    assert "paper.dataset 'imagenet'" in msg and "flowers102" in msg and "svhn" in msg
    assert "paper.arch 'resnet51'" in msg and "inception_v3" in msg


def test_offline_setting_fails_fast_naming_the_missing_weights_and_data(tmp_path, monkeypatch, load_params):
    monkeypatch.chdir(tmp_path)  # no data/ here
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # an empty weights cache

    def forbidden(*args, **kwargs):
        raise AssertionError("the paper check must not load weights, data or models")

    import torch
    import torchvision

    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", forbidden)
    for cls in (torchvision.datasets.DTD, torchvision.models.VGG, torchvision.models.Inception3):
        monkeypatch.setattr(cls, "__init__", forbidden)
    for dataset, arch, expect in (("dtd", "vgg19", "dtd/dtd/images"), ("isic2020", "inception_v3", "train.csv")):
        p = load_params({"paper": {"dataset": dataset, "arch": arch}})
        with pytest.raises(PaperSettingError) as err:
            check_paper_setting(p)  # looks at the file system only: loading or fetching anything fails here
        msg = str(err.value)
        assert f"ImageNet weights of {arch} missing" in msg and str(tmp_path / "torch" / "hub" / "checkpoints") in msg
        assert "download.pytorch.org" in msg
        assert f"data of {dataset}" in msg and expect in msg
    assert check_paper_setting(load_params(env="local")) is None  # not a paper run: nothing to check


def test_present_files_pass(tmp_path, monkeypatch, load_params):
    monkeypatch.chdir(tmp_path)
    p = load_params({"paper": {"dataset": "usps", "arch": "resnet50"}})
    from evotune.backbones import imagenet_weights_path

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    weights = imagenet_weights_path("resnet50")
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"")
    root = tmp_path / "data/01_raw/torchvision"
    root.mkdir(parents=True)
    (root / "usps.bz2").write_bytes(b"")
    (root / "usps.t.bz2").write_bytes(b"")
    check_paper_setting(p)


def test_the_paper_environment_runs_the_paper_pipeline_by_default(base_params, load_params):
    """`kedro run --env paper` (no --pipelines) runs `pretrained`: conf/paper's default_pipeline, chosen by the
    hook before the session reads its pipelines; the base environment keeps the embedded run."""
    from evotune.errors import ParameterError
    from evotune.pipeline_registry import register_pipelines, select_default_pipeline
    from evotune.validation import validate_run

    assert load_params()["default_pipeline"] == "pretrained" and "default_pipeline" not in base_params
    assert load_params()["fidelity"]["enabled"] is False  # the paper has no fidelity stage (its cost: docs)
    try:
        assert select_default_pipeline("pretrained")
        pipes = register_pipelines()
        assert {n.name for n in pipes["__default__"].nodes} == {n.name for n in pipes["pretrained"].nodes}
        assert "pretrain_source_model" not in {n.name for n in pipes["__default__"].nodes}
        assert not select_default_pipeline("pretrained")  # unchanged: the registry is not rebuilt
    finally:
        assert select_default_pipeline(None)
    assert "pretrain_source_model" in {n.name for n in register_pipelines()["__default__"].nodes}
    assert not select_default_pipeline("compare")  # not a choice: the embedded default, and the check says so
    with pytest.raises(ParameterError, match="default_pipeline is 'compare'; it may name pretrained"):
        validate_run({**base_params, "default_pipeline": "compare"}, [])
