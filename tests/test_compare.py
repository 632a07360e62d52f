"""The compare pipeline: its namespaced structure, its catalog entries, and a tiny end-to-end run."""

import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from kedro.config import OmegaConfigLoader
from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner

from evotune import settings
from evotune.backbones import build_model
from evotune.errors import ParameterError
from evotune.evaluation import MethodMetrics, TestMetrics
from evotune.genome import decode
from evotune.io import TypedJSONDataset
from evotune.methods import METHODS, SEARCH_METHODS, evaluation_chunk
from evotune.pipeline_registry import register_pipelines, select_compare_methods
from evotune.pipelines.compare import create_pipeline
from evotune.pipelines.compare.nodes import comparison_table
from evotune.pipelines.retrain.nodes import evaluate_on_test, retrain_best_genome
from evotune.retraining import TrainedMethod
from evotune.search.records import genome_record
from evotune.search.store import StudyStore

RETRAIN = {"seeds": [1, 2], "training": {}}


@pytest.fixture(scope="module")
def training(base_parameters):
    return {**base_parameters()["training"], "epochs": 1, "patience": 1, "batch_size": 16, "eval_batch_size": 64,
            "device": "cpu"}


@pytest.fixture(scope="module")
def search(base_parameters):
    return {**base_parameters()["search"], "population": 4, "elite": 1, "generations": 1, "seed": 0, "seeds": [1],
            "train_split_pct": 0.5, "study_name": "t"}


def test_one_namespaced_modular_pipeline_per_method():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no dotted-name warnings
        pipe = create_pipeline()
    names = {n.name for n in pipe.nodes}
    for m in METHODS:
        steps = ("search", "retrain", "test") if m in SEARCH_METHODS else ("train", "test")
        assert {f"compare.{m}.{s}" for s in steps} <= names
        assert f"params:compare.{m}" in pipe.inputs()
    assert {"compare.table", "compare.table_markdown", "compare.figure"} <= names
    assert pipe.inputs() == {
        "backbone", "target_train", "target_val", "target_test", "search_study_store", "test_metrics",
        "test_metrics_per_seed",
        "best_genome", "params:compare", "params:training", "params:retrain", "params:search",
        *{f"params:compare.{m}" for m in METHODS},
    }
    table = next(n for n in pipe.nodes if n.name == "compare.table")
    assert table.inputs[4:] == [f"compare.{m}.metrics" for m in METHODS]
    assert {n.namespace for n in pipe.nodes} == {f"compare.{m}" for m in METHODS} | {"compare"}


def test_the_pipeline_holds_only_the_chosen_methods_in_table_order():
    pipe = create_pipeline(["deft", "lora"])
    assert len(pipe.nodes) == 2 + 3 + 3
    assert {n.namespace for n in pipe.nodes} == {"compare.lora", "compare.deft", "compare"}
    table = next(n for n in pipe.nodes if n.name == "compare.table")
    assert table.inputs[4:] == ["compare.lora.metrics", "compare.deft.metrics"]  # the order of METHODS
    assert not any(name.startswith("compare.tpe") for name in pipe.all_outputs())
    with pytest.raises(ValueError, match="Unknown method 'nope'"):
        create_pipeline(["lora", "nope"])


def test_the_registry_builds_compare_from_the_runs_methods():
    """The hook hands the run's compare.methods to the registry; unknown names are left to the parameter
    check (one clear message before anything runs), which needs a compare node: the table's is there."""
    try:
        assert select_compare_methods(["linear_probe", "nope", "full_finetune"])
        assert not select_compare_methods(["linear_probe", "nope", "full_finetune"])
        names = {n.name for n in register_pipelines()["compare"].nodes}
        assert names == {"compare.full_finetune.train", "compare.full_finetune.test", "compare.linear_probe.train",
                         "compare.linear_probe.test", "compare.table", "compare.table_markdown", "compare.figure"}
        select_compare_methods("lora")  # not a list: only the table nodes; validate_run names the problem
        assert {n.name for n in register_pipelines()["compare"].nodes} == {
            "compare.table", "compare.table_markdown", "compare.figure"}
    finally:
        select_compare_methods(list(METHODS))


def test_the_hook_reads_the_runs_merged_parameters():
    from types import SimpleNamespace

    from evotune.hooks import ComparePipelineHooks

    context = SimpleNamespace(config_loader={"parameters": {"compare": {"methods": ["tpe", "lora"]}}})
    try:
        ComparePipelineHooks().after_context_created(context)
        table = next(n for n in register_pipelines()["compare"].nodes if n.name == "compare.table")
        assert table.inputs[4:] == ["compare.lora.metrics", "compare.tpe.metrics"]
    finally:
        select_compare_methods(list(METHODS))


def test_catalog_factories_version_every_compare_output():
    conf = OmegaConfigLoader("conf", env="local", **settings.CONFIG_LOADER_ARGS)
    catalog = DataCatalog.from_config(conf["catalog"])
    for name in ("compare.lora.metrics", "compare.deft.search_trials", "compare.deft.best_genome",
                 "compare.surgical.metrics_per_seed", "compare_table", "compare_table_markdown", "compare_figure"):
        ds = catalog.get(name)
        assert ds._version is not None, name
        assert "compare" in str(ds._filepath)
    assert type(catalog.get("compare.lora.trained")).__name__ == "MemoryDataset"
    for name in ("compare_table", "compare.lora.metrics_per_seed"):
        assert type(catalog.get(name)).__name__ == "ParquetDataset", name
    assert isinstance(catalog.get("compare.lora.metrics"), TypedJSONDataset)
    params = conf["parameters"]
    assert params["compare"]["seeds"] == params["retrain"]["seeds"]
    assert set(params["compare"]) == {"methods", "seeds", *METHODS}


def _feed(catalog: DataCatalog, params: dict, prefix: str = "params:") -> None:
    for k, v in params.items():
        catalog[f"{prefix}{k}"] = v
        if isinstance(v, dict):
            _feed(catalog, v, f"{prefix}{k}.")


class KeptMemoryDataset(MemoryDataset):
    """Keeps its data after the run (the runner releases intermediate datasets)."""

    def _release(self) -> None:
        pass


@pytest.fixture(scope="module")
def tiny_run(base_parameters, backbone_checkpoint, make_split, method_params, training, search):
    torch.manual_seed(0)
    backbone = backbone_checkpoint(build_model("resnet10", 3), 3)
    train, val, test = make_split(6, 3, seed=0), make_split(4, 3, seed=1), make_split(4, 3, seed=2)
    # BioTune's own outputs, as the default pipeline makes them (a stand-in for its search's best genome)
    genes = [0.1, 0.2, 0.3, 0.4, 0.8, 0.9, 0.5]
    best = genome_record(genes, fitness=0.5, key="g0/init/0", backbone=backbone,
                         block_names=["stem", "layer1", "layer2", "layer3", "layer4", "fc"], base_lr=1e-3,
                         force_head=True, study_name="t", storage=None, evaluations=9, trainings=9, device="cpu",
                         search_seconds=1.0, created="2026-01-01T00:00:00Z")
    retrained = retrain_best_genome(backbone, train, val, best, RETRAIN, training)
    test_metrics, per_seed = evaluate_on_test(backbone, retrained, test, training)
    compare = {**base_parameters()["compare"], "methods": ["linear_probe", "surgical", "lora", "deft"], "seeds": [1, 2]}
    compare["surgical"] = method_params("surgical", blocks=[1, "layer4"])
    compare["lora"] = method_params("lora", rank=2, alpha=2.0)
    compare["deft"] = method_params("deft", F=0.6, CR=0.8)
    catalog = DataCatalog()
    for name, value in {"backbone": backbone, "target_train": train, "target_val": val, "target_test": test,
                        "search_study_store": StudyStore(None),
                        "test_metrics": test_metrics, "test_metrics_per_seed": per_seed, "best_genome": best}.items():
        catalog[name] = value
    _feed(catalog, {"compare": compare, "search": search, "training": training, "retrain": RETRAIN})
    pipe = create_pipeline(compare["methods"])
    for name in pipe.all_outputs():
        catalog[name] = KeptMemoryDataset(copy_mode="assign")
    SequentialRunner().run(pipe, catalog)
    return catalog


def test_tiny_comparison_end_to_end(tiny_run):
    catalog = tiny_run
    table = catalog.load("compare_table")
    assert list(table["method"][table["kind"] == "method"]) == ["biotune", "linear_probe", "surgical", "lora", "deft"]
    rows = table.set_index("variant")
    assert list(table["variant"][table["kind"] == "variant"]) == ["surgical[layer1]", "surgical[layer4]"]
    by_method = table[table["kind"] == "method"].set_index("method")
    assert by_method.loc["linear_probe", "trainable_pct"] < by_method.loc["lora", "trainable_pct"] < 100
    assert by_method.loc["linear_probe", "trainings"] == 2 and by_method.loc["surgical", "trainings"] == 4
    assert all(0 <= a <= 1 for a in by_method["accuracy_mean"])
    assert rows.loc["linear_probe", "test_accuracy"].count("±") == 1
    assert "| biotune |" in catalog.load("compare_table_markdown")
    fig = catalog.load("compare_figure")
    assert fig.axes[0].get_xscale() == "log"
    # the reported surgical variant is the best by validation
    surgical = catalog.load("compare.surgical.metrics")
    assert isinstance(surgical, MethodMetrics)
    best = max(surgical.variants, key=lambda v: v.val_macro_acc_mean)
    assert surgical.variant == best.variant and surgical.selected_by
    assert len(catalog.load("compare.surgical.metrics_per_seed")) == 4
    assert isinstance(catalog.load("compare.surgical.trained"), TrainedMethod)
    # methods not chosen are not in the run, nor in the table
    assert "compare.tpe.metrics" not in catalog.keys()
    assert "tpe" not in set(table["method"])


def test_the_table_refuses_metrics_of_other_methods_than_chosen(tiny_run):
    catalog = tiny_run
    args = [catalog.load(n) for n in ("params:compare", "test_metrics", "test_metrics_per_seed", "best_genome")]
    lora = catalog.load("compare.lora.metrics")
    with pytest.raises(ParameterError, match=r"built for \['lora'\]"):
        comparison_table(*args, lora)


def test_typed_metrics_round_trip_through_the_catalog_datasets(tiny_run, tmp_path):
    catalog = tiny_run
    for name, cls in (("compare.surgical.metrics", MethodMetrics), ("test_metrics", TestMetrics)):
        ds = TypedJSONDataset(artifact=f"{cls.__module__}.{cls.__name__}", filepath=str(tmp_path / f"{name}.json"))
        ds.save(catalog.load(name))
        assert ds.load() == catalog.load(name)


def test_search_baseline_in_the_pipeline_uses_biotunes_budget(tiny_run, search_config):
    catalog = tiny_run
    trials = catalog.load("compare.deft.search_trials")
    best = catalog.load("compare.deft.best_genome")
    evo = search_config(population=4, elite=1, generations=1)
    assert len(trials) == best.evaluations == evo.evaluations == 9
    assert trials["chunk"].tolist() == [evaluation_chunk(j, evo, 2) for j in range(9)]
    assert "genotype" in trials and trials["key"].is_unique
    d = decode(best.genes, 1e-3, force_head=True)
    assert d.valid and all(lr == pytest.approx(1e-3) for lr in d.block_lrs if lr is not None)
    assert best.mask == d.mask and len(best.genotype) == 6 and best.method == "deft"
    metrics = catalog.load("compare.deft.metrics")
    valid = int(sum(bool(v) for v in trials["valid"]))
    assert metrics.trainings == valid * 1 + 2 and metrics.evaluations == 9
    assert metrics.block_lrs == best.block_lrs and metrics.search.evaluations == 9
    assert isinstance(catalog.load("compare.lora.metrics_per_seed"), pd.DataFrame)
    assert np.isclose(catalog.load("compare.lora.metrics").trainable_share,
                      catalog.load("compare_table").set_index("method").loc["lora", "trainable_pct"] / 100)
