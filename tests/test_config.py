"""How parameters merge: conf/base < run environment < --params, key by key (evotune.config)."""

from __future__ import annotations

import pytest
import yaml

from evotune.cli import parse_params, split_top_level
from evotune.config import ProjectConfigLoader, merge_parameters

BASE = {
    "search": {"population": 10, "generations": 5, "train_split_pct": 0.5, "seeds": [684, 559, 629]},
    "training": {"epochs": 12, "batch_size": 32, "cpu_threads": None},
    "data": {"source": {"kind": "embedded_digits", "polarity": "dark_on_light"}, "image": {"crop_size": 32}},
    "retrain": {"seeds": [684, 559, 629]},
    "compare": {"seeds": "${retrain.seeds}", "methods": ["linear_probe", "lora"]},
}


def write_conf(tmp_path, local: dict | None) -> str:
    conf = tmp_path / "conf"
    (conf / "base").mkdir(parents=True)
    (conf / "local").mkdir()
    for group, values in BASE.items():  # one file per group, as in the project
        (conf / "base" / f"parameters_{group}.yml").write_text(yaml.safe_dump({group: values}))
    if local is not None:
        (conf / "local" / "parameters.yml").write_text(yaml.safe_dump(local))
    return str(conf)


def load(conf: str, runtime: dict | None = None) -> dict:
    return ProjectConfigLoader(conf, base_env="base", default_run_env="local", runtime_params=runtime or {})["parameters"]


@pytest.mark.parametrize("local", [None, {"data": {"image": {"crop_size": 64}}}])
def test_runtime_params_change_one_key_even_with_a_local_parameters_file(tmp_path, local):
    """Kedro's default merged --params into each environment, then replaced whole groups: with any
    conf/local parameters file, --params search.generations=1 left search = {generations: 1}."""
    conf = write_conf(tmp_path, local)
    p = load(conf, {"search": {"generations": 1}, "training": {"cpu_threads": 1}})
    assert p["search"] == {**BASE["search"], "generations": 1}
    assert p["training"] == {"epochs": 12, "batch_size": 32, "cpu_threads": 1}
    assert p["data"]["image"]["crop_size"] == (64 if local else 32)


def test_local_overrides_key_by_key_and_a_new_kind_replaces_the_source(tmp_path):
    local = {"search": {"population": 4},
             "data": {"source": {"kind": "image_folder", "path": "data/01_raw/my_images"}}}
    p = load(write_conf(tmp_path, local))
    assert p["search"] == {**BASE["search"], "population": 4}
    assert p["data"]["source"] == {"kind": "image_folder", "path": "data/01_raw/my_images"}  # no polarity
    assert p["data"]["image"] == {"crop_size": 32}
    # the same kind merges
    p = load(write_conf(tmp_path / "b", {"data": {"source": {"kind": "embedded_digits", "polarity": "light_on_dark"}}}))
    assert p["data"]["source"] == {"kind": "embedded_digits", "polarity": "light_on_dark"}


def test_interpolations_follow_the_runtime_values(tmp_path):
    p = load(write_conf(tmp_path, {"training": {"epochs": 3}}), {"retrain": {"seeds": [1]}})
    assert p["compare"]["seeds"] == [1]


def test_merge_parameters_replaces_lists_and_scalars():
    assert merge_parameters({"a": [1, 2], "b": {"c": 1}}, {"a": [3], "b": {"d": 2}}) == {"a": [3], "b": {"c": 1, "d": 2}}
    assert merge_parameters({"a": {"x": 1}}, {"a": None}) == {"a": None}


def test_params_option_takes_lists_in_brackets():
    assert split_top_level("compare.methods=[linear_probe,lora,deft],search.seeds=[1, 2],a=b") == [
        "compare.methods=[linear_probe,lora,deft]", "search.seeds=[1, 2]", "a=b"]
    assert parse_params(None, None, "compare.methods=[linear_probe,lora],search.generations=1,paper.dataset=dtd") == {
        "compare": {"methods": ["linear_probe", "lora"]}, "search": {"generations": 1}, "paper": {"dataset": "dtd"}}
    assert parse_params(None, None, "training.device=cuda:1")["training"]["device"] == "cuda:1"
