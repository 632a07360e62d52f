"""The search-fidelity measurement: its statistics, and its node on a tiny search (real code paths)."""

import math
import time

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import spearmanr

from evotune.backbones import build_model
from evotune.errors import ParameterError
from evotune.fidelity import (
    COLUMNS,
    FidelityConfig,
    FidelitySummary,
    draw_random_genomes,
    rank_correlation,
    spearman,
)
from evotune.genome import genome_key
from evotune.pipelines.fidelity.nodes import measure_search_fidelity
from evotune.pipelines.search.nodes import run_search
from evotune.report import figures as F
from evotune.report import markdown as M
from evotune.search.store import StudyStore
from evotune.training import Trainer

# --------------------------------------------------------------------------- statistics


def test_monotone_data_gives_rho_one_and_a_degenerate_interval():
    x = np.arange(10.0)
    r = rank_correlation(x, x ** 3 + 1, n_boot=500, seed=0)
    assert r.rho == pytest.approx(1.0) and r.n == 10
    assert r.ci_low == pytest.approx(1.0) and r.ci_high == pytest.approx(1.0)
    assert -1.0 <= r.ci_low <= r.ci_high <= 1.0
    assert rank_correlation(x, -x, n_boot=500, seed=0).rho == pytest.approx(-1.0)


def test_spearman_matches_scipy_with_ties():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(3)
    x = rng.integers(0, 5, 30).astype(float)  # many ties
    y = x + rng.normal(0, 2, 30)
    assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)


def test_bootstrap_interval_is_seeded_and_within_bounds():
    rng = np.random.default_rng(0)
    x = rng.random(15)
    y = x + rng.normal(0, 0.3, 15)
    a = rank_correlation(x, y, n_boot=1000, seed=7)
    b = rank_correlation(x, y, n_boot=1000, seed=7)
    c = rank_correlation(x, y, n_boot=1000, seed=8)
    assert a == b and (a.ci_low, a.ci_high) != (c.ci_low, c.ci_high)
    assert -1.0 <= a.ci_low <= a.ci_high <= 1.0 and -1.0 <= a.rho <= 1.0


def test_too_few_genomes_give_no_number():
    r = rank_correlation([0.1, 0.2], [0.3, 0.4], n_boot=200, seed=0)
    assert math.isnan(r.rho) and math.isnan(r.ci_low) and r.n == 2
    assert math.isnan(spearman([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]))  # constant scores: not defined


def test_parameters_are_checked(base_parameters):
    params = base_parameters()["fidelity"]
    cfg = FidelityConfig.from_params(params)
    assert cfg.enabled and list(cfg.seeds) == base_parameters()["retrain"]["seeds"]
    with pytest.raises(ParameterError, match="fidelity.random_genomes must be >= 0"):
        FidelityConfig.from_params({**params, "random_genomes": -1})
    with pytest.raises(ParameterError, match="fidelity.bootstrap must be >= 100"):
        FidelityConfig.from_params({**params, "bootstrap": 10})
    with pytest.raises(ParameterError, match="fidelity.seeds must list at least one seed"):
        FidelityConfig.from_params({**params, "seeds": []})
    with pytest.raises(ParameterError, match="Unknown parameter.*fidelity.sedes"):
        FidelityConfig.from_params({**params, "sedes": [1]})


def test_random_genomes_are_not_the_search_s_own_draws():
    """fidelity.seed 0 and search.seed 0: the random genomes are not the search's initial population."""
    from evotune.genome import random_genome

    search_rng = np.random.default_rng(0)
    init = {genome_key(random_genome(search_rng, 5)) for _ in range(10)}
    drawn = draw_random_genomes(5, 5, seed=0)
    assert not init & {genome_key(g) for g in drawn}
    assert [genome_key(g) for g in drawn] == [genome_key(g) for g in draw_random_genomes(5, 5, seed=0)]


# --------------------------------------------------------------------------- the node, on a tiny search


@pytest.fixture(scope="module")
def training(base_parameters):
    return {**base_parameters()["training"], "epochs": 1, "patience": 1, "batch_size": 16, "eval_batch_size": 64,
            "device": "cpu"}


@pytest.fixture(scope="module")
def backbone(backbone_checkpoint):
    torch.manual_seed(0)
    return backbone_checkpoint(build_model("resnet10", 3), 3)


@pytest.fixture(scope="module")
def splits(make_split):
    return make_split(6, 3, seed=0), make_split(4, 3, seed=1), make_split(4, 3, seed=2)


@pytest.fixture(scope="module")
def search_params(base_parameters):
    return {**base_parameters()["search"], "population": 4, "elite": 1, "generations": 1, "seed": 0, "seeds": [1],
            "train_split_pct": 0.5, "study_name": "t"}


@pytest.fixture(scope="module")
def searched(backbone, splits, training, search_params):
    train, val, _ = splits
    return run_search(backbone, train, val, StudyStore(None), search_params, training)


def fidelity_params(**kw):
    return {"enabled": True, "random_genomes": 2, "seed": 0, "seeds": [1, 2], "bootstrap": 200, **kw}


def test_the_node_scores_retrains_and_tests_every_genome(backbone, splits, training, search_params, searched):
    train, val, test = splits
    trials, population, best = searched
    t0 = time.perf_counter()
    table, summary = measure_search_fidelity(backbone, train, val, test, population, trials, best, fidelity_params(),
                                             search_params, {"seeds": [684], "training": {}}, training)
    seconds = time.perf_counter() - t0
    assert isinstance(summary, FidelitySummary) and summary.enabled
    assert list(table.columns) == COLUMNS
    final = population[population["generation"] == population["generation"].max()]
    n_final = len({genome_key(r[[c for c in final.columns if c.startswith("gene_")]].astype(float))
                   for _, r in final.iterrows()})
    assert summary.n_final_population == n_final and summary.n_random == 2
    assert (table["origin"] == "random").sum() == 2 and len(table) == n_final + 2
    # the random genomes were scored as the search scores one: the last generation's chunk, search.seeds
    rnd = table[table["origin"] == "random"]
    assert rnd["key"].tolist() == ["fidelity/random/0", "fidelity/random/1"]
    assert (rnd["chunk"] == 1).all() and rnd["val_accs"].map(len).tolist() == [1, 1]
    assert np.allclose(rnd["val_score"], [np.mean(a) for a in rnd["val_accs"]])
    # the final population keeps the search's fitness; the best genome is among it
    assert table.loc[table["origin"] == "final_population", "fitness"].tolist() == \
        final.sort_values("rank")["fitness"].tolist()[:n_final]
    assert table["is_best"].sum() == 1
    # every valid genome retrained once per fidelity seed (not retrain.seeds) and tested
    valid = table[table["valid"]]
    assert valid["test_seeds"].map(list).tolist() == [[1, 2]] * len(valid)
    assert valid["test_macro_accs"].map(lambda a: all(0 <= x <= 1 for x in a)).all()
    assert summary.trainings == 2 * 1 + 2 * len(valid)
    assert summary.n == int(table["included"].sum()) and summary.generation == 1 and summary.chunk == 1
    # rho recomputed independently (scipy's Spearman) from the table's validation scores and mean test accuracies
    inc = table[table["included"]]
    expected = spearmanr(inc["val_score"].astype(float), inc["test_macro_acc_mean"].astype(float)).statistic
    assert summary.n == len(inc) >= 3 and not math.isnan(expected), "the tiny table must give a defined rho"
    assert summary.rho is not None and summary.rho == pytest.approx(expected, abs=1e-12)
    assert summary.ci_low is not None and -1 <= summary.ci_low <= summary.ci_high <= 1
    # the report's section and figure
    md = "\n".join(M.fidelity_section(summary, "figures/search_fidelity.png"))
    assert "## Search fidelity" in md and f"n = {summary.n} genomes" in md
    assert f"Cost: {summary.trainings} extra trainings" in md and "(figures/search_fidelity.png)" in md
    assert "search picks noise" in md
    fig = F.plot_search_fidelity(table, summary)
    assert "Search fidelity: " in fig.axes[0].get_title()
    print(f"\nfidelity node: {summary.trainings} extra trainings, {seconds:.1f}s")


def test_switched_off_it_trains_nothing(backbone, splits, training, search_params, searched, monkeypatch):
    train, val, test = splits
    trials, population, best = searched

    def no_training(*a, **k):
        raise AssertionError("trained although fidelity.enabled is false")

    monkeypatch.setattr(Trainer, "train", no_training)
    monkeypatch.setattr(Trainer, "__init__", no_training)
    table, summary = measure_search_fidelity(backbone, train, val, test, population, trials, best,
                                             fidelity_params(enabled=False), search_params,
                                             {"seeds": [684], "training": {}}, training)
    assert len(table) == 0 and list(table.columns) == COLUMNS
    assert not summary.enabled and summary.trainings == 0 and summary.rho is None
    md = "\n".join(M.fidelity_section(summary, None))
    assert "switched off" in md and "![" not in md
    fig = F.plot_search_fidelity(table, summary)
    assert "switched off" in fig.axes[0].texts[0].get_text()


def test_the_outputs_round_trip_through_the_catalog(backbone, splits, training, search_params, searched, tmp_path,
                                                    root):
    import yaml
    from kedro.io import DataCatalog

    train, val, test = splits
    trials, population, best = searched
    table, summary = measure_search_fidelity(backbone, train, val, test, population, trials, best,
                                             fidelity_params(random_genomes=0, seeds=[1]), search_params,
                                             {"seeds": [684], "training": {}}, training)
    cfg = yaml.safe_load((root / "conf/base/catalog.yml").read_text())
    cfg = {k: {**cfg[k], "filepath": str(tmp_path / cfg[k]["filepath"])}
           for k in ("search_fidelity", "search_fidelity_summary")}
    catalog = DataCatalog.from_config(cfg)
    catalog.save("search_fidelity", table)
    catalog.save("search_fidelity_summary", summary)
    back = catalog.load("search_fidelity")
    assert isinstance(back, pd.DataFrame) and back["key"].tolist() == table["key"].tolist()
    assert [list(a) for a in back["test_macro_accs"]] == [list(a) for a in table["test_macro_accs"]]
    assert catalog.load("search_fidelity_summary") == summary
