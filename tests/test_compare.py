"""The compare pipeline: its namespaced structure, its catalog entries, and a tiny end-to-end run."""

import dataclasses
import re
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
from evotune.errors import InputMismatchError, ParameterError
from evotune.evaluation import MethodMetrics
from evotune.genome import decode
from evotune.io import TypedJSONDataset
from evotune.methods import BIOTUNE, METHODS, PICK_METHODS, SEARCH_METHODS, evaluation_chunk
from evotune.pipeline_registry import register_pipelines, select_compare_methods
from evotune.pipelines.compare import create_pipeline
from evotune.pipelines.compare.nodes import (
    comparison_table,
    evaluate_method,
    resample_splits,
    retrain_searched_genome,
    search_biotune,
)
from evotune.pipelines.retrain.nodes import evaluate_on_test, retrain_best_genome
from evotune.pipelines.search.nodes import run_search
from evotune.retraining import BestGenomes, TrainedMethod
from evotune.search.store import StudyStore

RETRAIN = {"seeds": [1, 2], "training": {}}
#: the nodes every compare run holds: the resamplings, BioTune's, the table's
ALWAYS = {"compare.resample", "compare.biotune.search", "compare.biotune.retrain", "compare.biotune.test",
          "compare.biotune.budget", "compare.table", "compare.table_markdown", "compare.figure",
          "compare.budget_table", "compare.budget_table_markdown", "compare.budget_figure"}


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
    for m in (BIOTUNE, *METHODS):
        steps = (("search", "retrain", "test", "budget") if m in (BIOTUNE, *SEARCH_METHODS) else
                 ("pick", "retrain", "test") if m in PICK_METHODS else ("train", "test"))
        assert {f"compare.{m}.{s}" for s in steps} <= names
    # the pick rules' confirmation is trained once, in BioTune's namespace, and read by each rule's pick
    assert "compare.biotune.confirm" in names
    for m in PICK_METHODS:
        pick = next(n for n in pipe.nodes if n.name == f"compare.{m}.pick")
        assert "compare.biotune.confirmation" in pick.inputs and f"compare.{m}.confirmation" in pick.outputs
    assert "compare.biotune.confirm" not in {n.name for n in create_pipeline(["tpe"]).nodes}  # no rule, no confirmation
    for m in METHODS:
        assert f"params:compare.{m}" in pipe.inputs()
    assert {"compare.resample", "compare.table", "compare.table_markdown", "compare.figure", "compare.budget_table",
            "compare.budget_table_markdown", "compare.budget_figure"} <= names
    budget = next(n for n in pipe.nodes if n.name == "compare.budget_table")
    assert budget.inputs[1:] == [f"compare.{m}.budget_metrics" for m in (BIOTUNE, *SEARCH_METHODS)] + [
        "compare.full_finetune.metrics"]
    assert pipe.inputs() == {
        "backbone", "target_train", "target_val", "target_test", "target_index", "search_study_store",
        "params:compare", "params:training", "params:retrain", "params:search", "params:data", "params:confirm",
        *{f"params:compare.{m}" for m in METHODS},
    }
    table = next(n for n in pipe.nodes if n.name == "compare.table")
    assert table.inputs[1:] == [f"compare.{m}.metrics" for m in (BIOTUNE, *METHODS)]
    assert {n.namespace for n in pipe.nodes} == {f"compare.{m}" for m in (BIOTUNE, *METHODS)} | {"compare"}
    # every method node reads the one set of resamplings
    for n in pipe.nodes:
        if n.name.split(".")[-1] in ("train", "search", "retrain", "test", "budget", "confirm"):
            assert "compare_resamplings" in n.inputs, n.name


def test_the_pipeline_holds_only_the_chosen_methods_in_table_order():
    pipe = create_pipeline(["deft", "lora"])
    assert len(pipe.nodes) == 1 + 4 + 2 + 4 + 6
    assert {n.namespace for n in pipe.nodes} == {"compare.biotune", "compare.lora", "compare.deft", "compare"}
    table = next(n for n in pipe.nodes if n.name == "compare.table")
    assert table.inputs[1:] == ["compare.biotune.metrics", "compare.lora.metrics", "compare.deft.metrics"]
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
                         "compare.linear_probe.test", *ALWAYS}
        select_compare_methods("lora")  # not a list: BioTune and the table; validate_run names the problem
        assert {n.name for n in register_pipelines()["compare"].nodes} == ALWAYS
    finally:
        select_compare_methods(list(METHODS))


def test_the_hook_reads_the_runs_merged_parameters():
    from types import SimpleNamespace

    from evotune.hooks import ComparePipelineHooks

    context = SimpleNamespace(config_loader={"parameters": {"compare": {"methods": ["tpe", "lora"]}}})
    try:
        ComparePipelineHooks().after_context_created(context)
        table = next(n for n in register_pipelines()["compare"].nodes if n.name == "compare.table")
        assert table.inputs[1:] == ["compare.biotune.metrics", "compare.lora.metrics", "compare.tpe.metrics"]
    finally:
        select_compare_methods(list(METHODS))


def test_catalog_factories_version_every_compare_output(conf_dir):
    conf = OmegaConfigLoader(str(conf_dir), env="local", **settings.CONFIG_LOADER_ARGS)
    catalog = DataCatalog.from_config(conf["catalog"])
    for name in ("compare.lora.metrics", "compare.deft.search_trials", "compare.deft.best_genomes", "compare_resamplings",
                 "compare.deft.budget_metrics", "compare_budget_table", "compare_budget_table_markdown",
                 "compare_budget_figure",
                 "compare.biotune.metrics",
                 "compare.surgical.metrics_per_seed", "compare_table", "compare_table_markdown", "compare_figure"):
        ds = catalog.get(name)
        assert ds._version is not None, name
        assert "compare" in str(ds._filepath)
    assert isinstance(catalog.get("compare.biotune.best_genomes"), TypedJSONDataset)
    assert type(catalog.get("compare.lora.trained")).__name__ == "MemoryDataset"
    for name in ("compare_table", "compare.lora.metrics_per_seed"):
        assert type(catalog.get(name)).__name__ == "ParquetDataset", name
    assert isinstance(catalog.get("compare.lora.metrics"), TypedJSONDataset)
    params = conf["parameters"]
    assert params["compare"]["seeds"] == params["retrain"]["seeds"]
    assert set(params["compare"]) == {"methods", "seeds", "resamplings", "budgets", *METHODS}
    assert params["compare"]["resamplings"] == 3


def _feed(catalog: DataCatalog, params: dict, prefix: str = "params:") -> None:
    for k, v in params.items():
        catalog[f"{prefix}{k}"] = v
        if isinstance(v, dict):
            _feed(catalog, v, f"{prefix}{k}.")


class KeptMemoryDataset(MemoryDataset):
    """Keeps its data after the run (the runner releases intermediate datasets)."""

    def _release(self) -> None:
        pass


def _index(*splits) -> pd.DataFrame:
    """A target_index as the data stage writes it (no official splits)."""
    return pd.DataFrame([{"item": it, "label": int(y), "class_name": sp.classes[int(y)], "official_split": "",
                          "split": name} for name, sp in zip(("train", "val", "test"), splits)
                         for it, y in zip(sp.items, sp.labels.tolist())])


@pytest.fixture(scope="module")
def tiny_run(base_parameters, backbone_checkpoint, make_split, method_params, training, search):
    """The compare pipeline on the tiny splits, R = 2 resamplings, 2 seeds, BioTune and four baselines."""
    torch.manual_seed(0)
    backbone = backbone_checkpoint(build_model("resnet10", 3), 3)
    train, val, test = make_split(6, 3, seed=0), make_split(4, 3, seed=1), make_split(4, 3, seed=2)
    compare = {**base_parameters()["compare"], "methods": ["linear_probe", "surgical", "lora", "deft"], "seeds": [1, 2],
               "resamplings": 2}
    compare["surgical"] = method_params("surgical", blocks=[1, "layer4"])
    compare["lora"] = method_params("lora", rank=2, alpha=2.0)
    compare["deft"] = method_params("deft", F=0.6, CR=0.8)
    catalog = DataCatalog()
    for name, value in {"backbone": backbone, "target_train": train, "target_val": val, "target_test": test,
                        "target_index": _index(train, val, test), "search_study_store": StudyStore(None)}.items():
        catalog[name] = value
    _feed(catalog, {"compare": compare, "search": search, "training": training, "retrain": RETRAIN,
                    "data": base_parameters()["data"]})
    pipe = create_pipeline(compare["methods"])
    for name in pipe.all_outputs():
        catalog[name] = KeptMemoryDataset(copy_mode="assign")
    SequentialRunner().run(pipe, catalog)
    return catalog


def test_tiny_comparison_end_to_end(tiny_run):
    catalog = tiny_run
    table = catalog.load("compare_table")
    assert list(table["method"][table["kind"] == "method"]) == ["biotune", "linear_probe", "surgical", "lora", "deft"]
    assert list(table["variant"][table["kind"] == "variant"]) == ["surgical[layer1]", "surgical[layer4]"]
    by_method = table[table["kind"] == "method"].set_index("method")
    assert by_method.loc["linear_probe", "trainable_pct"] < by_method.loc["lora", "trainable_pct"] < 100
    # R = 2 resamplings x 2 seeds (x 2 blocks for surgical)
    assert by_method.loc["linear_probe", "trainings"] == 4 and by_method.loc["surgical", "trainings"] == 8
    assert set(by_method["n_resamplings"]) == {2} and set(by_method["n_seeds"]) == {2}
    assert all(0 <= a <= 1 for a in by_method["macro_accuracy_mean"])
    assert by_method.loc["linear_probe", "test_accuracy"].count("±") == 1
    assert (by_method["macro_accuracy_ci_low"] <= by_method["macro_accuracy_mean"] + 1e-12).all()
    assert by_method.loc["biotune", "verdict"] == "" and np.isnan(by_method.loc["biotune", "diff_mean"])
    assert set(by_method["verdict"].iloc[1:]) <= {"better", "worse", "no significant difference"}
    md = catalog.load("compare_table_markdown")
    assert "| biotune |" in md and "paired diff to BioTune" in md and "ddof = 0" in md and "R = 2" in md
    # the per-block rows have no difference or verdict: blank cells, not "nan"
    assert not re.search(r"\bnan\b", md, re.IGNORECASE), md
    block_row = next(line for line in md.splitlines() if line.startswith("| surgical | surgical[layer1] |"))
    assert [c.strip() for c in block_row.split("|")[4:6]] == ["", ""], block_row
    fig = catalog.load("compare_figure")
    assert fig.axes[0].get_xscale() == "log" and "macro accuracy" in fig.axes[0].get_ylabel()
    # the reported surgical variant is the best by validation, on each resampling
    surgical = catalog.load("compare.surgical.metrics")
    assert isinstance(surgical, MethodMetrics) and surgical.selected_by
    per_seed = catalog.load("compare.surgical.metrics_per_seed")
    assert len(per_seed) == 8 and sorted(set(per_seed["resampling"])) == [0, 1]
    for rs in surgical.resamplings:
        rows = per_seed[per_seed["resampling"] == rs.resampling]
        val = rows.groupby("variant")["best_val_acc"].mean()
        assert rs.variant == val.idxmax() and rs.macro_accuracy == pytest.approx(
            rows[rows["variant"] == rs.variant]["macro_accuracy"].tolist())
    trained = catalog.load("compare.surgical.trained")
    assert len(trained) == 2 and all(isinstance(t, TrainedMethod) for t in trained)
    # each resampling is its own dataset; resampling 0 is the run's split
    resamplings = catalog.load("compare_resamplings")
    assert [r.dataset for r in resamplings.resamplings][0] == "tiny"
    assert [rs.dataset for rs in surgical.resamplings] == [r.dataset for r in resamplings.resamplings]
    assert trained[1].dataset == resamplings.resamplings[1].dataset != "tiny"
    # the row is the mean over resamplings of the mean over seeds
    lp = catalog.load("compare.linear_probe.metrics")
    assert by_method.loc["linear_probe", "macro_accuracy_mean"] == pytest.approx(
        np.mean([r.macro_accuracy_mean for r in lp.resamplings]))
    # methods not chosen are not in the run, nor in the table
    assert "compare.tpe.metrics" not in catalog.keys()
    assert "tpe" not in set(table["method"])


def test_biotune_runs_its_own_search_on_each_resampling(tiny_run):
    catalog = tiny_run
    trials = catalog.load("compare.biotune.search_trials")
    best = catalog.load("compare.biotune.best_genomes")
    assert best.resamplings == [0, 1] and sorted(set(trials["resampling"])) == [0, 1]
    assert best.genomes[0].study_name != best.genomes[1].study_name  # one study per resampling
    assert all(g.study_name.startswith("t-") for g in best.genomes)  # BioTune's own study naming
    resamplings = catalog.load("compare_resamplings").resamplings
    assert [g.dataset for g in best.genomes] == [r.dataset for r in resamplings]
    metrics = catalog.load("compare.biotune.metrics")
    assert metrics.method == "biotune" and len(metrics.resamplings) == 2
    assert metrics.trainings == sum(g.trainings for g in best.genomes) + 2 * 2


def test_the_method_row_names_each_resamplings_choice_when_they_differ(tiny_run):
    catalog = tiny_run
    params = {**catalog.load("params:compare"), "methods": ["surgical"]}
    biotune, surgical = catalog.load("compare.biotune.metrics"), catalog.load("compare.surgical.metrics")
    same = dataclasses.replace(surgical, variant="surgical[layer4]", resamplings=[
        dataclasses.replace(r, variant="surgical[layer4]") for r in surgical.resamplings])

    def method_row(table):
        return table[(table["kind"] == "method") & (table["method"] == "surgical")].iloc[0]

    assert method_row(comparison_table(params, biotune, same))["variant"] == "surgical[layer4]"
    differ = dataclasses.replace(surgical, variant="surgical[layer1]", resamplings=[
        dataclasses.replace(r, variant=v) for r, v in zip(surgical.resamplings, ("surgical[layer4]", "surgical[layer1]"))])
    table = comparison_table(params, biotune, differ)
    assert method_row(table)["variant"] == "surgical[layer4, layer1]"
    assert table[table["method"] == "biotune"]["variant"].item() == "biotune"


def test_the_table_refuses_metrics_of_other_methods_than_chosen(tiny_run):
    catalog = tiny_run
    biotune, lora = catalog.load("compare.biotune.metrics"), catalog.load("compare.lora.metrics")
    with pytest.raises(ParameterError, match=r"built for \['lora'\]"):
        comparison_table(catalog.load("params:compare"), biotune, lora)


def test_the_table_refuses_metrics_of_other_data_or_resamplings(tiny_run):
    """A table put together from methods measured in separate runs must not pair results of other data."""
    catalog = tiny_run
    params = {**catalog.load("params:compare"), "methods": ["lora"]}
    biotune, lora = catalog.load("compare.biotune.metrics"), catalog.load("compare.lora.metrics")
    assert not comparison_table(params, biotune, lora).empty
    with pytest.raises(InputMismatchError, match=r"compare.table: .*different data .*compare.lora.metrics: other"):
        comparison_table(params, biotune, dataclasses.replace(lora, dataset="other"))
    with pytest.raises(InputMismatchError, match=r"different backbone"):
        comparison_table(params, biotune, dataclasses.replace(lora, backbone_id="other"))
    with pytest.raises(InputMismatchError, match=r"different resamplings .*compare.lora.metrics: r0 tiny\)"):
        comparison_table(params, biotune, dataclasses.replace(lora, resamplings=lora.resamplings[:1]))


def test_typed_metrics_round_trip_through_the_catalog_datasets(tiny_run, tmp_path):
    catalog = tiny_run
    for name, cls in (("compare.surgical.metrics", MethodMetrics), ("compare.deft.best_genomes", BestGenomes)):
        ds = TypedJSONDataset(artifact=f"{cls.__module__}.{cls.__name__}", filepath=str(tmp_path / f"{name}.json"))
        ds.save(catalog.load(name))
        assert ds.load() == catalog.load(name)


def test_search_baseline_in_the_pipeline_uses_biotunes_budget(tiny_run, search_config):
    catalog = tiny_run
    all_trials = catalog.load("compare.deft.search_trials")
    genomes = catalog.load("compare.deft.best_genomes")
    evo = search_config(population=4, elite=1, generations=1)
    assert len(all_trials) == 2 * 9 and genomes.resamplings == [0, 1]
    for r, best in zip(genomes.resamplings, genomes.genomes):
        trials = all_trials[all_trials["resampling"] == r]
        assert len(trials) == best.evaluations == evo.evaluations == 9
        assert trials["chunk"].tolist() == [evaluation_chunk(j, evo, 2) for j in range(9)]
        assert "genotype" in trials and trials["key"].is_unique
        d = decode(best.genes, 1e-3, force_head=True)
        assert d.valid and all(lr == pytest.approx(1e-3) for lr in d.block_lrs if lr is not None)
        assert best.mask == d.mask and len(best.genotype) == 6 and best.method == "deft"
    metrics = catalog.load("compare.deft.metrics")
    valid = int(sum(bool(v) for v in all_trials["valid"]))
    assert metrics.trainings == valid * 1 + 2 * 2 and metrics.evaluations == 2 * 9
    assert metrics.block_lrs == genomes.genomes[0].block_lrs and metrics.search.evaluations == 9
    assert [r.search.evaluations for r in metrics.resamplings] == [9, 9]
    assert isinstance(catalog.load("compare.lora.metrics_per_seed"), pd.DataFrame)
    assert np.isclose(catalog.load("compare.lora.metrics").trainable_share,
                      catalog.load("compare_table").set_index("method").loc["lora", "trainable_pct"] / 100)


def test_each_search_is_tested_at_a_quarter_half_and_all_of_its_budget(tiny_run):
    """The best-so-far genome after 25 / 50 / 100 % of the evaluations (9: 3, 5 and 9), retrained and tested where
    it is not the final genome; at 100 % the method's own test, nothing retrained; the table and figure."""
    catalog = tiny_run
    for method in ("biotune", "deft"):
        rows = catalog.load(f"compare.{method}.budget_metrics")
        trials = catalog.load(f"compare.{method}.search_trials")
        metrics = catalog.load(f"compare.{method}.metrics")
        assert sorted(set(rows["resampling"])) == [0, 1] and sorted(set(rows["budget"])) == [0.25, 0.5, 1.0]
        for r in (0, 1):
            at = rows[rows["resampling"] == r].set_index("budget")
            assert at["evaluations"].tolist() == [3, 5, 9]
            ordered = trials[trials["resampling"] == r]
            ordered = ordered.sort_values("index" if "index" in ordered else "generation", kind="stable")
            for b, n in ((0.25, 3), (0.5, 5)):
                first = ordered.iloc[:n]
                assert at.loc[b, "key"] == first.iloc[int(first["fitness"].to_numpy().argmin())]["key"]
                assert at.loc[b, "search_trainings"] == int(first["valid"].astype(bool).sum())  # 1 search seed
            full = next(x for x in metrics.resamplings if x.resampling == r)
            assert not at.loc[1.0, "retrained"] and at.loc[1.0, "macro_accuracy_mean"] == pytest.approx(
                full.macro_accuracy_mean)
            for b in (0.25, 0.5):  # a best-so-far genome that is already the final one is not retrained
                assert bool(at.loc[b, "retrained"]) == (at.loc[b, "key"] != at.loc[1.0, "key"])
            assert (at["trainings"] == at["search_trainings"] + 2).all()  # + the retraining's 2 seeds
    table = catalog.load("compare_budget_table")
    assert list(dict.fromkeys(table["method"])) == ["biotune", "deft"] and (table["n_resamplings"] == 2).all()
    assert (table["ci_low"] <= table["macro_accuracy_mean"] + 1e-12).all()
    assert "| BioTune | 25 % |" in catalog.load("compare_budget_table_markdown")
    assert catalog.load("compare_budget_figure").axes[0].get_xscale() == "log"


def test_biotunes_pick_rules_run_in_the_comparison(base_parameters, backbone_checkpoint, make_split, method_params,
                                                  training, search):
    """biotune_confirmed and biotune_parsimonious: BioTune's own search on each resampling, its two best genomes
    confirmed once (compare.biotune.confirm: both chunks, one confirmation seed), each rule picking from those same
    trainings; the pick retrained and tested; the confirmation's trainings are in each rule's cost."""
    from evotune.errors import InputMismatchError
    from evotune.pipelines.compare.nodes import pick_confirmed_genomes

    torch.manual_seed(0)
    backbone = backbone_checkpoint(build_model("resnet10", 3), 3)
    train, val, test = make_split(6, 3, seed=0), make_split(4, 3, seed=1), make_split(4, 3, seed=2)
    compare = {**base_parameters()["compare"], "methods": ["biotune_confirmed", "biotune_parsimonious"], "seeds": [1],
               "resamplings": 2}
    catalog = DataCatalog()
    for name, value in {"backbone": backbone, "target_train": train, "target_val": val, "target_test": test,
                        "target_index": _index(train, val, test), "search_study_store": StudyStore(None)}.items():
        catalog[name] = value
    confirm = {"rule": "best", "top_k": 2, "seeds": [7]}
    _feed(catalog, {"compare": compare, "search": search, "training": training, "retrain": RETRAIN,
                    "data": base_parameters()["data"], "confirm": confirm})
    pipe = create_pipeline(compare["methods"])
    assert {n.name for n in pipe.nodes} >= {"compare.biotune.confirm", "compare.biotune_confirmed.pick",
                                            "compare.biotune_parsimonious.pick"}
    for name in pipe.all_outputs():
        catalog[name] = KeptMemoryDataset(copy_mode="assign")
    SequentialRunner().run(pipe, catalog)
    shared = catalog.load("compare.biotune.confirmation")
    biotune = catalog.load("compare.biotune.best_genomes")
    assert sorted(set(shared["resampling"])) == [0, 1] and (shared["trainings"] == 2).all() and len(shared) == 4
    for method, rule in (("biotune_confirmed", "confirmed"), ("biotune_parsimonious", "parsimonious")):
        picked = catalog.load(f"compare.{method}.best_genomes")
        confirmation = catalog.load(f"compare.{method}.confirmation")
        assert picked.resamplings == [0, 1] and sorted(set(confirmation["resampling"])) == [0, 1]
        for r, (p, b) in enumerate(zip(picked.genomes, biotune.genomes)):
            rows = confirmation[confirmation["resampling"] == r]
            assert len(rows) == 2 and rows["trainings"].tolist() == [2, 2] and rows["picked"].sum() == 1
            # the rule read BioTune's confirmation: the same trainings, not its own
            ours = shared[shared["resampling"] == r].sort_values("search_rank")
            assert rows["key"].tolist() == ours["key"].tolist()
            assert [list(v) for v in rows["val_accs"]] == [list(v) for v in ours["val_accs"]]
            assert p.pick_rule == rule and p.search_best_key == b.key and p.key == rows.loc[rows["picked"],
                                                                                             "key"].item()
            assert p.confirm_trainings == 4 and p.trainings == b.trainings  # the search's own, the record's meaning
            assert p.confirm_seconds == pytest.approx(ours["seconds"].sum()) and p.confirm_seconds > 0
        ours, theirs = catalog.load(f"compare.{method}.metrics"), catalog.load("compare.biotune.metrics")
        # the two resamplings' confirmation is counted in the rule's cost: its trainings and its seconds
        assert ours.trainings == theirs.trainings + 2 * 4
        assert ours.search_seconds == pytest.approx(theirs.search_seconds + sum(p.confirm_seconds for p in picked.genomes))
        assert ours.compute_seconds == pytest.approx(ours.search_seconds + ours.train_seconds)
    table = catalog.load("compare_table").set_index("method")
    assert table.loc["biotune_parsimonious", "kind"] == "method"

    # a confirmation that is not this search's (resampling 1's rows lost) is refused before any pick
    partial = shared[shared["resampling"] == 0]
    with pytest.raises(InputMismatchError, match=r"compare\.biotune_confirmed\.pick: compare\.biotune\.confirmation "
                                                 r"on resampling 1.*kedro run --pipelines compare"):
        pick_confirmed_genomes(backbone, train, val, test, catalog.load("compare_resamplings"),
                               catalog.load("compare.biotune.search_trials"), biotune, partial, compare, {}, confirm,
                               search, training, method="biotune_confirmed")


def test_the_budget_table_takes_full_finetuning_as_the_budget_1_reference():
    from evotune.report.budget import budget_table

    rows = pd.DataFrame([{"method": "tpe", "resampling": r, "budget": b, "evaluations": n, "trainings": 3 * n + 3,
                          "retrained": b < 1, "macro_accuracy_mean": 0.9 + 0.01 * r + 0.02 * b}
                         for r in (0, 1, 2) for b, n in ((0.25, 19), (1.0, 75))])
    table = budget_table(rows, {"method": "full_finetune", "trainings": 3, "scores": {0: 0.9, 1: 0.91, 2: 0.93}})
    assert table["method"].tolist() == ["tpe", "tpe", "full_finetune"]
    assert table["macro_accuracy_mean"].tolist() == pytest.approx([0.915, 0.93, 0.9133333])
    assert table["trainings"].tolist() == [60, 228, 3] and np.isnan(table["budget"].iloc[-1])
    assert table["retrained"].tolist() == [3, 0, 0]


def test_biotune_on_resampling_0_resumes_the_default_runs_study(tmp_path, base_parameters, backbone_checkpoint,
                                                                   make_split, training, search):
    """After a tiny default search, BioTune's compare run on resampling 0 trains no new evaluation, and its
    test numbers are the default run's test_metrics."""
    torch.manual_seed(0)
    backbone = backbone_checkpoint(build_model("resnet10", 3), 3)
    train, val, test = make_split(6, 3, seed=0), make_split(4, 3, seed=1), make_split(4, 3, seed=2)
    store = StudyStore(f"sqlite:///{tmp_path / 'studies.db'}")
    _, _, best = run_search(backbone, train, val, store, search, training)
    test_metrics, _ = evaluate_on_test(backbone, retrain_best_genome(backbone, train, val, best, RETRAIN, training),
                                       test, training)
    n_trials = len(store.open(best.study_name).trials)

    compare = {**base_parameters()["compare"], "methods": ["linear_probe"], "seeds": RETRAIN["seeds"], "resamplings": 1}
    resamplings = resample_splits(train, val, test, _index(train, val, test), base_parameters()["data"], compare)
    splits = (train, val, test, resamplings)
    _, genomes = search_biotune(backbone, *splits, store, compare, search, training)
    assert genomes.genomes[0].study_name == best.study_name
    assert len(store.open(best.study_name).trials) == n_trials  # nothing trained again
    assert genomes.genomes[0].genes == best.genes
    # the reused search still cost what it cost: its trainings and seconds are the method's (it counted 0 before)
    trials = store.open(best.study_name).trials
    made = sum(len(t.user_attrs.get("val_accs") or []) for t in trials)
    assert best.trainings == made > 0 and genomes.genomes[0].trainings == made
    assert genomes.genomes[0].search_seconds == pytest.approx(best.search_seconds)
    trained = retrain_searched_genome(backbone, *splits, genomes, compare, training, RETRAIN, method="biotune")
    metrics, per_seed = evaluate_method(backbone, trained, *splits, training)
    assert metrics.trainings == made + len(RETRAIN["seeds"])
    assert metrics.resamplings[0].seeds == RETRAIN["seeds"]
    for key in ("accuracy_mean", "macro_accuracy_mean", "macro_f1_mean"):
        assert getattr(metrics, key) == pytest.approx(getattr(test_metrics, key)), key
    assert metrics.confusion_matrix == test_metrics.confusion_matrix
