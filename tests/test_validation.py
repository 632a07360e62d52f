"""Bad parameters fail before any training, with one message naming the parameter."""

import copy

import pytest
from kedro.config import OmegaConfigLoader
from kedro.framework.project import configure_project

from evotune.pipeline_registry import register_pipelines
from evotune.validation import ParameterError, validate_run


@pytest.fixture(scope="module")
def base_params(conf_dir):
    loader = OmegaConfigLoader(str(conf_dir), base_env="base", default_run_env="local")
    return loader["parameters"]


@pytest.fixture(scope="module")
def nodes():
    configure_project("evotune")
    pipes = register_pipelines()
    return {name: [n.name for n in p.nodes] for name, p in pipes.items()}


def test_the_default_parameters_are_valid(base_params, nodes):
    validate_run(base_params, nodes["__default__"])


@pytest.mark.parametrize(
    "path, value, message",
    [
        (("backbone", "arch"), "resnet51", "resnet50"),
        (("source_pretraining", "arch"), "resnet18", "source_pretraining.arch"),
        (("search", "elite"), 99, "search.elite"),
        (("search", "population"), 2, "search.population"),
        (("search", "train_split_pct"), 0.0, "search.train_split_pct"),
        (("search", "seeds"), [], "search.seeds"),
        (("search", "populaton"), 5, "Unknown parameter.*search.populaton"),
        (("training", "epochs"), 0, "training.epochs"),
        (("training", "device"), "cuda:7" , "training.device"),
        (("training", "cpu_threads"), 0, "training.cpu_threads"),
        (("retrain", "seeds"), [], "retrain.seeds"),
        (("confirm", "rule"), "luckiest", r"confirm\.rule must be one of best, confirmed, parsimonious"),
        (("confirm", "top_k"), 0, "confirm.top_k"),
        (("data", "source"), {"kind": "image_folder", "path": "/nonexistent/images"}, "/nonexistent/images"),
        (("data", "source"), {"kind": "torchvision", "name": "ImageNet21k", "root": "x"}, "CIFAR10"),
        (("backbone", "weights"), "imagenet", "pretrained"),
    ],
)
def test_bad_parameters_name_the_parameter(base_params, nodes, path, value, message):
    params = copy.deepcopy(base_params)
    params[path[0]][path[1]] = value
    with pytest.raises(ParameterError, match=message):
        validate_run(params, nodes["__default__"])


def test_a_compared_pick_rule_checks_the_confirm_section_with_its_own_rule(base_params, nodes):
    """compare.biotune_parsimonious with confirm.top_k 1 fails before BioTune's search, though confirm.rule (best)
    alone accepts top_k 1."""
    assert "compare.biotune_parsimonious.pick" in nodes["compare"] and "compare.biotune.confirm" in nodes["compare"]
    params = copy.deepcopy(base_params)
    params["confirm"]["top_k"] = 1
    validate_run(params, [n for n in nodes["compare"] if ".biotune_parsimonious." not in n])
    with pytest.raises(ParameterError, match=r"parsimonious needs confirm\.top_k >= 2"):
        validate_run(params, nodes["compare"])


def test_a_vision_transformer_at_its_input_size_is_valid(base_params, nodes):
    params = copy.deepcopy(base_params)
    params["backbone"]["arch"] = params["source_pretraining"]["arch"] = "vit_tiny32"
    assert params["data"]["image"]["crop_size"] is None  # null: the architecture's own, 32 px
    validate_run(params, nodes["__default__"])


def test_a_vision_transformer_at_another_explicit_size_is_refused(base_params, nodes):
    params = copy.deepcopy(base_params)
    params["backbone"].update(arch="vit_b_16", weights="none")
    validate_run(params, nodes["pretrained"])  # data.image null: decoded at the ViT's 224 px
    params["data"]["image"].update(resize_size=32, crop_size=32)
    with pytest.raises(ParameterError, match=r"vit_b_16 takes 224x224 inputs only.*data.image.crop_size"):
        validate_run(params, nodes["pretrained"])


def test_missing_imagenet_weights_fail_before_training_with_the_path(base_params, nodes, tmp_path):
    params = copy.deepcopy(base_params)
    params["backbone"].update(arch="resnet18", weights="imagenet", torch_home=str(tmp_path))
    with pytest.raises(ParameterError, match=r"resnet18-.*\.pth"):
        validate_run(params, nodes["pretrained"])
    params["backbone"].update(weights=str(tmp_path / "missing.pt"))
    with pytest.raises(ParameterError, match="missing.pt"):
        validate_run(params, nodes["pretrained"])


def test_a_storage_that_cannot_be_opened_names_the_parameter(tmp_path):
    from evotune.search.store import open_study

    with pytest.raises(ValueError, match="search.storage"):
        open_study("postgresql://nobody@127.0.0.1:1/none", "s")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ValueError, match="search.storage"):
        open_study(f"sqlite:///{blocker}/sub/study.db", "s")


def test_num_classes_that_disagrees_with_the_data_is_an_error(tiny_split, base_parameters):
    from evotune.pipelines.backbone.nodes import BackboneParams, target_num_classes

    split = tiny_split(2, 3)
    bp = BackboneParams.from_params(base_parameters()["backbone"])
    assert target_num_classes(split, bp) == 3
    with pytest.raises(ValueError, match="backbone.num_classes is 5 but the target data has 3 classes"):
        target_num_classes(split, BackboneParams.from_params({**base_parameters()["backbone"], "num_classes": 5}))


def test_the_backbone_stage_reads_classes_and_lineage_from_target_train(tiny_split, base_parameters):
    """The backbone stage needs the class count and the data's fingerprint, both in the split
    (the data stage checked the labels); it does not read the data index."""
    from evotune.pipelines.backbone import create_pipeline, create_pretrained_pipeline
    from evotune.pipelines.backbone.nodes import load_pretrained_backbone

    for pipe in (create_pipeline(), create_pretrained_pipeline()):
        assert "target_train" in pipe.inputs() and "target_index" not in pipe.inputs()
    split = tiny_split(2, 3)
    params = {**base_parameters()["backbone"], "arch": "resnet10", "weights": "none"}
    ckpt = load_pretrained_backbone(split, params, base_parameters()["data"])
    assert ckpt.num_classes == 3 and ckpt.dataset == split.dataset == "tiny"


def test_predict_needs_a_source_and_export_a_retrained_seed(base_params, nodes, tmp_path):
    with pytest.raises(ParameterError, match="predict.source is not set"):
        validate_run(base_params, nodes["predict"])
    params = copy.deepcopy(base_params)
    params["predict"]["source"] = str(tmp_path)
    validate_run(params, nodes["predict"])
    params["export"].update(selection="seed", seed=12345)
    with pytest.raises(ParameterError, match=r"export.seed is 12345, which is not one of retrain.seeds"):
        validate_run(params, nodes["__default__"])
    del params["export"]["verify_images"]
    with pytest.raises(ParameterError, match="Missing parameter.*export.verify_images.*parameters_export.yml"):
        validate_run(params, nodes["export"])


def test_predict_without_an_export_says_to_run_the_pipeline_first(tmp_path):
    from evotune.validation import check_export_available

    class Catalog:  # what the hook sees: an export dataset with no version yet
        def exists(self, name):
            return False

        def get(self, name):
            return type("Dataset", (), {"_filepath": tmp_path / "exported_model.safetensors"})()

    with pytest.raises(ParameterError, match="No exported model to predict with.*Run `kedro run`"):
        check_export_available(Catalog(), {"predict": {"model_version": None}}, ["exported_model_weights"])
    (tmp_path / "exported_model.safetensors" / "2026-01-01T00.00.00.000Z").mkdir(parents=True)
    with pytest.raises(ParameterError, match="no export 2030.*Versions there: 2026-01-01T00.00.00.000Z"):
        check_export_available(Catalog(), {"predict": {"model_version": "2030"}}, ["exported_model_weights"])
