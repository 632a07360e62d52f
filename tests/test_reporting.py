"""Tests for evotune.report and the reporting pipeline, on small synthetic search / test artifacts.

3 generations (0 = initial population, 1, 2), population 4, elite 1, 6 blocks, 2 seeds.
"""

from __future__ import annotations

import copy
import re
from dataclasses import replace
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import yaml  # noqa: E402
from matplotlib.container import BarContainer  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from evotune.errors import InputMismatchError  # noqa: E402
from evotune.evaluation import TestMetrics  # noqa: E402
from evotune.fidelity import COLUMNS as FIDELITY_COLUMNS  # noqa: E402
from evotune.fidelity import FidelitySummary  # noqa: E402
from evotune.methods import METHODS  # noqa: E402
from evotune.pipelines.reporting import create_pipeline  # noqa: E402
from evotune.pipelines.reporting import nodes as N  # noqa: E402
from evotune.report import figures as F  # noqa: E402
from evotune.report import labels  # noqa: E402
from evotune.report import markdown as M  # noqa: E402
from evotune.report import summary as S  # noqa: E402
from evotune.retraining import TrainedRun, TrainedVariant  # noqa: E402
from evotune.search.records import GenomeRecord  # noqa: E402

BLOCKS = ["stem", "layer1", "layer2", "layer3", "layer4", "fc"]
ROOT = Path(__file__).resolve().parents[1]

# population after each generation, sorted by fitness: (key, fitness, mask)
POP = {
    0: [("g0/init/1", 0.30, "001111"), ("g0/init/0", 0.35, "111111"), ("g0/init/2", 0.50, "000011"),
        ("g0/init/3", 1.00, "000001")],
    1: [("g1/elite_plus/0", 0.28, "011111"), ("g0/init/0", 0.35, "111111"), ("g1/child/0", 0.40, "000111"),
        ("g1/child/1", 0.45, "000011")],
    2: [("g1/elite_plus/0", 0.28, "011111"), ("g2/child/0", 0.29, "001111"), ("g2/child/2", 0.31, "011111"),
        ("g2/child/1", 0.33, "111111")],
}
# evaluations requested per generation: (key, role, fitness, mask, valid, cached, seconds)
TRIALS = {
    0: [("g0/init/0", "init", 0.35, "111111", True, False, 10.0), ("g0/init/1", "init", 0.30, "001111", True, False, 6.0),
        ("g0/init/2", "init", 0.50, "000011", True, False, 3.0), ("g0/init/3", "init", 1.00, "000001", True, True, 2.0)],
    1: [("g1/elite_plus/0", "elite_plus", 0.28, "011111", True, False, 8.0),
        ("g1/elite_minus/0", "elite_minus", 0.32, "001111", True, False, 6.5),
        ("g1/child/0", "child", 0.40, "000111", True, False, 5.0), ("g1/child/1", "child", 0.45, "000011", True, False, 3.5),
        ("g1/child/2", "child", 1.00, "000000", False, False, 0.0)],
    2: [("g2/elite_plus/0", "elite_plus", 0.30, "011111", True, False, 8.0),
        ("g2/elite_minus/0", "elite_minus", 0.29, "011111", True, False, 8.0),
        ("g2/child/0", "child", 0.29, "001111", True, False, 6.0), ("g2/child/1", "child", 0.33, "111111", True, False, 10.0),
        ("g2/child/2", "random_child", 0.31, "011111", True, False, 8.0)],
}


def _genes_for(mask: str, rng: np.random.Generator) -> dict[str, float]:
    thr = 0.5
    row = {f"gene_{b}": (0.5 + 0.5 * rng.uniform(0.05, 1)) if m == "1" else 0.5 * rng.uniform(0, 0.95)
           for b, m in zip(BLOCKS, mask)}
    row["gene_threshold"] = thr
    return row


@pytest.fixture
def population() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for g, pop in POP.items():
        for rank, (key, fit, mask) in enumerate(pop):
            rows.append({"generation": g, "rank": rank, "key": key, "fitness": fit, "extinction": 0.1 * rank,
                         "mask": mask, **_genes_for(mask, rng)})
    return pd.DataFrame(rows)


@pytest.fixture
def trials() -> pd.DataFrame:
    rng = np.random.default_rng(1)
    rows = []
    for g, ts in TRIALS.items():
        for key, role, fit, mask, valid, cached, sec in ts:
            acc = 1 - fit
            rows.append({"key": key, "generation": g, "role": role, "chunk": g % 2, "mask": mask, "valid": valid,
                         "diverged": False, "val_accs": [acc - 0.01, acc + 0.01] if valid else [],
                         "epochs": [5, 6] if valid else [], "seconds": sec, "device": "cpu", "arch": "resnet18",
                         "fitness": fit, "cached": cached, **_genes_for(mask, rng)})
    return pd.DataFrame(rows)


@pytest.fixture
def best_genome() -> GenomeRecord:
    genes = [0.2, 0.8, 0.6, 0.75, 0.9, 0.55, 0.5]
    mults = [0.0] + [10 ** (2 * (g - 0.5)) for g in genes[1:6]]
    return GenomeRecord(**{
        "arch": "resnet18", "block_names": BLOCKS, "genes": genes, "threshold": 0.5, "mask": "011111",
        "block_lrs": [None] + [1e-3 * m for m in mults[1:]], "lr_multipliers": mults, "fitness": 0.28,
        "key": "g1/elite_plus/0", "force_head_trainable": True, "base_lr": 1e-3, "study_name": "biotune-abc123",
        "storage": "sqlite:///data/07_model_output/optuna_studies.db", "evaluations": 14, "trainings": 26,
        "device": "cuda", "search_seconds": 3725.0, "dataset": "a1b2c3d4e5f6", "backbone_id": "0f0f0f0f0f0f",
        "created": "2026-11-27T10:00:00Z",
    })


@pytest.fixture
def test_metrics() -> TestMetrics:
    conf = [[18, 1, 1], [2, 16, 2], [0, 3, 17]]
    return TestMetrics(
        method="biotune", variant="biotune", n_seeds=2, n_test_images=30, accuracy_mean=0.85, accuracy_std=0.01666,
        macro_accuracy_mean=0.8512, macro_accuracy_std=0.02, macro_f1_mean=0.8456, macro_f1_std=0.0123,
        cohen_kappa_mean=0.775, cohen_kappa_std=0.025, val_macro_acc_mean=0.89, trainable_params=11_170_000,
        total_params=11_180_000, trainable_share=11_170_000 / 11_180_000, block_lrs=[None] + [1e-3] * 5, params={},
        classes=["cat", "dog", "fox"], confusion_matrix=conf, device="cuda", dataset="a1b2c3d4e5f6",
        dataset_name="image_folder pets", backbone_id="0f0f0f0f0f0f",
        inputs_created={"backbone": "2026-11-27T09:00:00Z", "retrained_models": "2026-11-27T11:00:00Z"},
        created="2026-11-27T12:00:00Z",
    )


@pytest.fixture
def per_seed() -> pd.DataFrame:
    return pd.DataFrame({
        "seed": [684, 559], "accuracy": [0.8667, 0.8333], "macro_accuracy": [0.87, 0.83],
        "macro_f1": [0.858, 0.833], "cohen_kappa": [0.80, 0.75], "best_val_acc": [0.9, 0.88],
        "epochs_run": [7, 9], "train_seconds": [12.5, 75.0],
    })


def _run(seed: int, losses: list[float], accs: list[float], best_epoch: int, diverged: bool = False) -> TrainedRun:
    history = [{"epoch": e + 1, "train_loss": lo, "val_macro_acc": a} for e, (lo, a) in enumerate(zip(losses, accs))]
    return TrainedRun(seed=seed, state_dict=None, best_val_acc=max(accs), best_epoch=best_epoch,
                      epochs_run=len(history), history=history, seconds=1.0, diverged=diverged)


@pytest.fixture
def retrained(best_genome) -> TrainedVariant:
    """The retrained best genome as the retrain stage stores it (no weights needed here): seed 684 ran 4 epochs,
    its best the 3rd; seed 559 diverged in its 3rd epoch, its best the 1st."""
    runs = [_run(684, [1.1, 0.8, 0.6, 0.5], [0.5, 0.75, 0.875, 0.8125], 3),
            _run(559, [1.2, 0.9], [0.625, 0.5], 1, diverged=True)]
    return TrainedVariant(method="biotune", variant="biotune", params={}, genome=best_genome,
                          block_lrs=list(best_genome.block_lrs), trainable_params=11_170_000, total_params=11_180_000,
                          device="cuda", runs=runs, dataset=best_genome.dataset, backbone_id=best_genome.backbone_id,
                          created="2026-11-27T11:00:00Z")


#: compare_links when `kedro run --pipelines compare` has not run
NO_COMPARE = {"table": None, "figure": None}
V_COMPARE = "2026-11-28T08.00.00.000Z"
COMPARE = {"table": {"link": f"../compare/comparison.md/{V_COMPARE}/comparison.md", "version": V_COMPARE},
           "figure": {"link": f"../compare/accuracy_vs_trainable.png/{V_COMPARE}/accuracy_vs_trainable.png",
                      "version": V_COMPARE}}


# ----------------------------------------------------------------------------------------
# summary
# ----------------------------------------------------------------------------------------
def test_generation_summary_values(population, trials):
    s = S.generation_summary(population, trials)
    assert list(s.columns) == S.SUMMARY_COLUMNS
    assert s["generation"].tolist() == [0, 1, 2]
    assert s["population"].tolist() == [4, 4, 4]
    assert s["best_fitness"].tolist() == pytest.approx([0.30, 0.28, 0.28])
    assert s["mean_fitness"].tolist() == pytest.approx([(0.30 + 0.35 + 0.50 + 1.0) / 4, (0.28 + 0.35 + 0.40 + 0.45) / 4,
                                                         (0.28 + 0.29 + 0.31 + 0.33) / 4])
    assert s["worst_fitness"].tolist() == pytest.approx([1.0, 0.45, 0.33])
    assert s["best_so_far"].tolist() == pytest.approx([0.30, 0.28, 0.28])
    assert s["n_evaluations"].tolist() == [4, 5, 5]
    assert s["n_cached"].tolist() == [1, 0, 0]
    assert s["n_invalid"].tolist() == [0, 1, 0]
    assert s["train_seconds"].tolist() == pytest.approx([21.0, 23.0, 40.0])
    assert s["mean_trained_blocks"].tolist() == pytest.approx([(4 + 6 + 2 + 1) / 4, (5 + 6 + 3 + 2) / 4,
                                                                (5 + 4 + 5 + 6) / 4])
    assert s["best_mask"].tolist() == ["001111", "011111", "011111"]
    assert s["best_key"].tolist() == ["g0/init/1", "g1/elite_plus/0", "g1/elite_plus/0"]


def test_best_so_far_is_the_cumulative_minimum(population, trials):
    # a (non-elitist) population whose best gets worse in generation 2
    pop = population.copy()
    pop.loc[pop["generation"] == 2, "fitness"] += 0.1
    s = S.generation_summary(pop, trials)
    assert s["best_fitness"].tolist() == pytest.approx([0.30, 0.28, 0.38])
    assert s["best_so_far"].tolist() == pytest.approx([0.30, 0.28, 0.28])


def test_generation_without_population_uses_its_trials(population, trials):
    pop = population[population["generation"] < 2]
    s = S.generation_summary(pop, trials)
    assert s["generation"].tolist() == [0, 1, 2]
    assert s.loc[2, "population"] == 0
    assert s.loc[2, "best_fitness"] == pytest.approx(0.29)
    assert s.loc[2, "best_key"] == "g2/elite_minus/0"
    assert s.loc[2, "n_evaluations"] == 5


def test_summary_survives_a_parquet_round_trip(population, trials, tmp_path):
    pop, tri = population.copy(), trials.copy()
    pop.to_parquet(tmp_path / "pop.parquet")
    assert isinstance(tri["val_accs"].iloc[0], list)  # a list column, as the search writes it
    tri.to_parquet(tmp_path / "trials.parquet")
    s = S.generation_summary(pd.read_parquet(tmp_path / "pop.parquet"), pd.read_parquet(tmp_path / "trials.parquet"))
    assert s["best_mask"].tolist() == ["001111", "011111", "011111"]
    s.to_parquet(tmp_path / "summary.parquet")
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "summary.parquet"), s)
    # a mask stored as a list of 0/1 reads the same
    pop["mask"] = [[int(c) for c in m] for m in pop["mask"]]
    assert S.generation_summary(pop, trials)["best_mask"].tolist() == ["001111", "011111", "011111"]


def test_gene_trajectories_is_the_population_long_by_gene():
    """One row per gene of every individual, named after its block, the threshold last; by gene, generation and
    rank (the population's rank, whatever the row order), the best of each generation flagged."""
    pop = pd.DataFrame([
        {"generation": 0, "rank": 1, "key": "g0/init/1", "fitness": 0.5, "mask": "01", "gene_stem": 0.2,
         "gene_fc": 0.9, "gene_threshold": 0.5},
        {"generation": 0, "rank": 0, "key": "g0/init/0", "fitness": 0.3, "mask": "11", "gene_stem": 0.7,
         "gene_fc": 0.6, "gene_threshold": 0.4},
        {"generation": 1, "rank": 0, "key": "g1/child/0", "fitness": 0.25, "mask": "10", "gene_stem": 0.8,
         "gene_fc": 0.1, "gene_threshold": 0.3},
        {"generation": 1, "rank": 1, "key": "g0/init/0", "fitness": 0.3, "mask": "11", "gene_stem": 0.7,
         "gene_fc": 0.6, "gene_threshold": 0.4},
    ])
    expected = pd.DataFrame({
        "gene": ["stem"] * 4 + ["fc"] * 4 + ["threshold"] * 4,
        "generation": [0, 0, 1, 1] * 3,
        "rank": [0, 1, 0, 1] * 3,
        "key": ["g0/init/0", "g0/init/1", "g1/child/0", "g0/init/0"] * 3,
        "value": [0.7, 0.2, 0.8, 0.7, 0.6, 0.9, 0.1, 0.6, 0.4, 0.5, 0.3, 0.4],
        "is_best": [True, False, True, False] * 3,
    })
    out = S.gene_trajectories(pop)
    assert list(out.columns) == S.GENE_TRAJECTORY_COLUMNS
    pd.testing.assert_frame_equal(out, expected)
    # without a rank column the population is ranked by fitness
    pd.testing.assert_frame_equal(S.gene_trajectories(pop.drop(columns="rank")), expected)
    assert S.gene_trajectories(pop.iloc[0:0]).empty


def test_training_history_is_one_row_per_seed_and_epoch(retrained):
    expected = pd.DataFrame({
        "seed": [684, 684, 684, 684, 559, 559],
        "epoch": [1, 2, 3, 4, 1, 2],
        "train_loss": [1.1, 0.8, 0.6, 0.5, 1.2, 0.9],
        "val_macro_acc": [0.5, 0.75, 0.875, 0.8125, 0.625, 0.5],
        "is_best": [False, False, True, False, True, False],
        "diverged": [False] * 4 + [True] * 2,
    })
    pd.testing.assert_frame_equal(S.training_history(retrained.runs), expected)
    assert list(S.training_history([]).columns) == S.TRAINING_HISTORY_COLUMNS


def test_every_method_has_a_label():
    for name in ("biotune", *METHODS):
        assert name in labels.METHOD_LABELS, name
    assert labels.method_label("full_finetune") == "Full fine-tuning"
    assert labels.method_label("lora") == "LoRA"


def test_markdown_table_helper():
    t = M.markdown_table(["a", "b"], [[1, "x|y"], [2.5, None]], "rl")
    assert t.splitlines() == ["| a | b |", "| --: | :-- |", "| 1 | x\\|y |", "| 2.5 |  |"]
    with pytest.raises(ValueError):
        M.markdown_table(["a"], [[1, 2]])


def test_format_duration():
    assert M.format_duration(4.25) == "4.2 s"
    assert M.format_duration(125) == "2m 05s"
    assert M.format_duration(3725) == "1h 02m 05s"


# ----------------------------------------------------------------------------------------
# figures
# ----------------------------------------------------------------------------------------
def test_plot_fitness(population, trials):
    s = S.generation_summary(population, trials)
    fig = F.plot_fitness(s)
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert "fitness" in ax.get_title().lower()
    assert ax.get_xlabel() and ax.get_ylabel()
    lines = {ln.get_label(): ln for ln in ax.get_lines()}
    assert set(lines) == {"best", "mean", "best so far"}
    np.testing.assert_allclose(lines["best"].get_ydata(), [0.30, 0.28, 0.28])
    np.testing.assert_allclose(lines["mean"].get_ydata(), s["mean_fitness"])
    np.testing.assert_allclose(lines["best so far"].get_xdata(), [0, 1, 2])


def test_plot_block_selection(population):
    fig = F.plot_block_selection(population, BLOCKS)
    assert len(fig.axes) == 2  # heatmap + colorbar
    ax = fig.axes[0]
    assert "block" in ax.get_title().lower()
    data = np.asarray(ax.images[0].get_array())
    assert data.shape == (3, 6)
    expected = np.array([
        [1, 1, 2, 2, 3, 4],  # 001111 111111 000011 000001
        [1, 2, 2, 3, 4, 4],  # 011111 111111 000111 000011
        [1, 3, 4, 4, 4, 4],  # 011111 001111 011111 111111
    ]) / 4
    np.testing.assert_allclose(data, expected)
    texts = [t.get_text() for t in ax.texts]
    assert len(texts) == 18
    assert texts[:6] == ["0.25", "0.25", "0.50", "0.50", "0.75", "1.00"]
    assert [t.get_text() for t in ax.get_xticklabels()] == BLOCKS
    assert [t.get_text() for t in ax.get_yticklabels()] == ["0", "1", "2"]


def test_plot_lr_multipliers(best_genome):
    fig = F.plot_lr_multipliers(best_genome)
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"
    assert "learning-rate" in ax.get_title().lower()
    bars = [c for c in ax.containers if isinstance(c, BarContainer)]
    assert len(bars) == 1 and len(bars[0]) == 5  # stem is frozen
    heights = [p.get_height() for p in bars[0]]
    np.testing.assert_allclose(heights, best_genome.lr_multipliers[1:])
    assert [p.get_x() + p.get_width() / 2 for p in bars[0]] == pytest.approx([1, 2, 3, 4, 5])
    texts = [t.get_text() for t in ax.texts]
    assert texts.count("frozen") == 1
    assert "3.98x" in texts  # gene 0.8 -> 10 ** 0.6
    assert [t.get_text() for t in ax.get_xticklabels()] == BLOCKS


def test_plot_gene_trajectories(population, best_genome):
    fig = F.plot_gene_trajectories(population, best_genome)
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == BLOCKS + ["threshold"]  # one panel per gene, named after its block
    table = S.gene_trajectories(population)
    for ax in panels:
        gene = ax.get_title()
        lines = {ln.get_label(): ln for ln in ax.get_lines()}
        best = table[(table["gene"] == gene) & table["is_best"]]
        np.testing.assert_allclose(lines["best of the generation"].get_xdata(), [0, 1, 2])
        np.testing.assert_allclose(lines["best of the generation"].get_ydata(), best["value"])
        assert ("its threshold (above: trained)" in lines) == (gene != "threshold")
        points = {c.get_label(): c for c in ax.collections}
        assert len(points["population"].get_offsets()) == 12  # 4 individuals x 3 generations
        # the best genome (g1/elite_plus/0) lives in generations 1 and 2
        star = points[f"best genome ({best_genome.key})"].get_offsets()
        np.testing.assert_allclose(np.asarray(star)[:, 0], [1, 2])
        assert ax.get_ylim() == pytest.approx((-0.03, 1.03))
    assert len(fig.legends) == 1
    empty = F.plot_gene_trajectories(population.iloc[0:0], best_genome)
    assert "No population" in empty.axes[0].texts[0].get_text()


def test_plot_training_curves(retrained, best_genome):
    history = S.training_history(retrained.runs)
    fig = F.plot_training_curves(history, best_genome)
    loss_ax, acc_ax = fig.axes
    assert loss_ax.get_ylabel() == "training loss" and acc_ax.get_ylabel() == "validation macro accuracy (%)"
    acc = {ln.get_label(): ln for ln in acc_ax.get_lines()}
    assert set(acc) == {"seed 684", "seed 559 (diverged)"}
    np.testing.assert_allclose(acc["seed 684"].get_ydata(), [50, 75, 87.5, 81.25])
    np.testing.assert_allclose(acc["seed 559 (diverged)"].get_xdata(), [1, 2])
    loss = {ln.get_label(): ln for ln in loss_ax.get_lines()}
    np.testing.assert_allclose(loss["seed 684"].get_ydata(), [1.1, 0.8, 0.6, 0.5])
    # each seed's best epoch (the state kept) starred, on both panels
    stars = [np.asarray(c.get_offsets()) for c in acc_ax.collections if len(c.get_offsets())]
    assert [s.tolist() for s in stars] == [[[3.0, 87.5]], [[1.0, 62.5]]]
    assert len([c for c in loss_ax.collections if len(c.get_offsets())]) == 2
    assert "best epoch (kept)" in [t.get_text() for t in acc_ax.get_legend().get_texts()]
    assert f"best genome {best_genome.key}" in fig.get_suptitle() and "2 seeds" in fig.get_suptitle()


def test_plot_confusion(test_metrics):
    fig = F.plot_confusion(test_metrics)
    ax = fig.axes[0]
    assert "confusion" in ax.get_title().lower()
    data = np.asarray(ax.images[0].get_array())
    np.testing.assert_allclose(data[0], [0.9, 0.05, 0.05])
    np.testing.assert_allclose(data.sum(axis=1), 1.0)
    assert [t.get_text() for t in ax.texts] == ["18", "1", "1", "2", "16", "2", "0", "3", "17"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["cat", "dog", "fox"]
    assert ax.get_xlabel() == "predicted class" and ax.get_ylabel() == "true class"


def test_plot_confusion_many_classes_not_annotated(test_metrics):
    k = 20
    conf = np.eye(k, dtype=int) * 5
    conf[0, :] = 0  # a class with no test image: its row stays 0, no division by zero
    fig = F.plot_confusion(replace(test_metrics, confusion_matrix=conf.tolist(), classes=[f"c{i}" for i in range(k)]))
    ax = fig.axes[0]
    assert len(ax.texts) == 0
    data = np.asarray(ax.images[0].get_array())
    assert data.shape == (k, k) and data[0].sum() == 0 and data[1, 1] == 1.0


@pytest.fixture
def fidelity_summary() -> FidelitySummary:
    return FidelitySummary(
        enabled=True, rho=0.6, ci_low=0.1, ci_high=0.9, confidence=0.95, n=6, n_final_population=4, n_random=2,
        n_excluded=0, generation=2, chunk=0, seeds=[684, 559], search_seeds=[684, 559], bootstrap=2000, trainings=16,
        seconds=125.0, dataset="a1b2c3d4e5f6", backbone_id="0f0f0f0f0f0f", created="2026-11-27T12:30:00Z")


@pytest.fixture
def fidelity_table() -> pd.DataFrame:
    rows = []
    for i, (origin, fit, test) in enumerate([("final_population", 0.28, 0.85), ("final_population", 0.29, 0.84),
                                             ("final_population", 0.31, 0.80), ("final_population", 0.33, 0.82),
                                             ("random", 0.50, 0.70), ("random", 0.45, 0.75)]):
        rows.append({"key": f"k{i}", "origin": origin, "is_best": i == 0, "generation": 2, "chunk": 0,
                     "mask": "011111", "genes": [0.5] * 7, "valid": True, "fitness": fit, "val_score": 1 - fit,
                     "val_accs": [1 - fit] * 2, "test_seeds": [684, 559], "test_macro_accs": [test] * 2,
                     "test_macro_acc_mean": test, "retrain_seconds": 10.0, "included": True})
    return pd.DataFrame(rows)[FIDELITY_COLUMNS]


# ----------------------------------------------------------------------------------------
# report
# ----------------------------------------------------------------------------------------
def test_markdown_report(population, trials, best_genome, test_metrics, per_seed):
    s = S.generation_summary(population, trials)
    paths = {"fitness": "figures/fitness.png", "confusion_matrix": "figures/confusion_matrix.png"}
    md = M.markdown_report(best_genome, s, test_metrics, per_seed, paths)
    # the report names its data and the inputs it was made from
    assert "Data: image_folder pets (split fingerprint `a1b2c3d4e5f6`)" in md
    assert "backbone `0f0f0f0f0f0f` made 2026-11-27T09:00:00Z" in md and "retrain made 2026-11-27T11:00:00Z" in md
    assert md.startswith("# BioTune on resnet18: results")
    # headline
    # the headline is the paper's metric, macro accuracy, with the population std (ddof=0)
    assert ("**Test macro accuracy 85.12 ± 2.00 %** (class-balanced, the paper's metric; mean ± population std "
            "(ddof=0) over 2 seeds, 30 test images); plain accuracy 85.00 ± 1.67 %.") in md
    assert md.index("| test macro accuracy |") < md.index("| test accuracy |")
    assert "| test macro F1 | 84.56 ± 1.23 % |" in md
    assert "| Cohen's kappa | 0.7750 ± 0.0250 |" in md
    assert "| trainable parameters | 99.91 % (11,170,000 of 11,180,000) |" in md
    # best genome table: one row per block, then the threshold
    assert "| stem | no | 0.200 | frozen |" in md
    assert "| layer1 | yes | 0.800 | 3.98x |" in md
    assert "| fc | yes | 0.550 | 1.26x |" in md
    assert "| *threshold* |  | 0.500 |  |" in md
    assert "validation macro accuracy 72.00 %" in md
    # search settings and cost
    assert "| evaluations | 14 |" in md
    assert "| trainings (evaluations x seeds, reused ones included) | 26 |" in md
    assert "| search time (sum over evaluations) | 1h 02m 05s |" in md
    assert "| search device | cuda |" in md
    assert "| population | 4 |" in md
    assert "| generations | 2 (after the initial population) |" in md
    # per-generation table
    gen_rows = [ln for ln in md.splitlines() if re.match(r"^\| [0-2] \| 0\.", ln)]
    assert len(gen_rows) == 3
    assert gen_rows[0].startswith("| 0 | 0.3000 | 0.5375 | 1.0000 | 0.3000 | 4 | 1 | 21.0 s | 3.25 | `001111` | g0/init/1 |")
    # per-seed table
    assert "| 684 | 87.00 | 86.67 | 85.80 | 0.8000 | 90.00 | 7 | 12.5 s |" in md
    assert "| 559 | 83.00 | 83.33 | 83.30 | 0.7500 | 88.00 | 9 | 1m 15s |" in md
    # figure links, in the given order
    assert "![Fitness per generation](figures/fitness.png)" in md
    assert "![Test confusion matrix](figures/confusion_matrix.png)" in md
    assert md.index("figures/fitness.png") < md.index("figures/confusion_matrix.png")
    assert "lr_multipliers.png" not in md
    assert "Search fidelity" not in md  # no measurement given: no section


def test_markdown_report_search_fidelity(population, trials, best_genome, test_metrics, per_seed, fidelity_summary):
    s = S.generation_summary(population, trials)
    paths = {"search_fidelity": "figures/search_fidelity.png"}
    md = M.markdown_report(best_genome, s, test_metrics, per_seed, paths, fidelity_summary)
    assert "## Search fidelity" in md
    assert "rho = **0.60** [0.10, 0.90] (95 % bootstrap interval), n = 6 genomes (4 of the final population" in md
    assert "Cost: 16 extra trainings, 2m 05s" in md and "search picks noise" in md
    assert md.index("## Search fidelity") < md.index("## Figures")
    assert "Figure: [Search fidelity: search score vs test macro accuracy](figures/search_fidelity.png)" in md
    assert "![Search fidelity: search score vs test macro accuracy](figures/search_fidelity.png)" in md
    off = replace(fidelity_summary, enabled=False, rho=None, ci_low=None, ci_high=None)
    md = M.markdown_report(best_genome, s, test_metrics, per_seed, {}, off)
    assert "measurement was switched off (`fidelity.enabled: false`)" in md and "search_fidelity.png" not in md


def test_markdown_report_links_the_comparison_when_it_has_run(population, trials, best_genome, test_metrics,
                                                               per_seed):
    s = S.generation_summary(population, trials)
    paths = {"fitness": "figures/fitness.png"}
    md = M.markdown_report(best_genome, s, test_metrics, per_seed, paths, compare_links=NO_COMPARE)
    assert ("## Comparison with the baselines\n\nNot run yet: `kedro run --pipelines compare` (then "
            "`kedro run --pipelines reporting` links it here).") in md
    assert md.index("## Comparison with the baselines") < md.index("## Figures")
    md = M.markdown_report(best_genome, s, test_metrics, per_seed, paths, compare_links=COMPARE)
    assert "Not run yet" not in md
    assert f"version `{V_COMPARE}` when this report was written" in md
    assert f"[the table](../compare/comparison.md/{V_COMPARE}/comparison.md)" in md
    assert (f"![{labels.COMPARE_FIGURE_TITLE}](../compare/accuracy_vs_trainable.png/{V_COMPARE}/"
            "accuracy_vs_trainable.png)") in md
    # the table without its figure (a run stopped between them): the table is linked, no image
    md = M.markdown_report(best_genome, s, test_metrics, per_seed, paths, compare_links={**COMPARE, "figure": None})
    assert "[the table](" in md and "accuracy_vs_trainable.png" not in md
    # no links given: no section
    assert "Comparison with the baselines" not in M.markdown_report(best_genome, s, test_metrics, per_seed, paths)


def test_plot_search_fidelity(fidelity_table, fidelity_summary):
    fig = F.plot_search_fidelity(fidelity_table, fidelity_summary)
    ax = fig.axes[0]
    assert ax.get_title() == "Search fidelity: Spearman rho = 0.60 [0.10, 0.90] (95 % CI), n = 6"
    assert len(ax.collections) == 3  # final population, random genomes, the best genome
    off = F.plot_search_fidelity(fidelity_table.iloc[0:0], replace(fidelity_summary, enabled=False))
    assert "switched off" in off.axes[0].texts[0].get_text()


# ----------------------------------------------------------------------------------------
# nodes and pipeline
# ----------------------------------------------------------------------------------------
def test_nodes_callable_directly(population, trials, best_genome, test_metrics, per_seed, fidelity_summary,
                                 fidelity_table, retrained):
    s = N.summarise_generations(population, trials)
    assert s["best_so_far"].iloc[-1] == pytest.approx(0.28)
    figs = N.plot_search_figures(s, population, best_genome)
    # each figure drawn once, handed to its versioned dataset and to its copy beside the latest report
    assert len(figs) == 6 and all(isinstance(f, Figure) for f in figs) and figs[:3] == figs[3:]
    assert len({id(f) for f in figs}) == 3
    versioned, latest_copy = N.plot_confusion_matrix(test_metrics)
    assert isinstance(versioned, Figure) and versioned is latest_copy
    versioned, latest_copy = N.plot_search_fidelity(fidelity_table, fidelity_summary)
    assert isinstance(versioned, Figure) and versioned is latest_copy
    versioned, latest_copy = N.plot_gene_trajectories(population, best_genome)
    assert isinstance(versioned, Figure) and versioned is latest_copy
    history = N.tabulate_retrain_history(retrained, best_genome)
    pd.testing.assert_frame_equal(history, S.training_history(retrained.runs))
    versioned, latest_copy = N.plot_training_curves(history, best_genome)
    assert isinstance(versioned, Figure) and versioned is latest_copy
    with pytest.raises(InputMismatchError, match="tabulate_retrain_history.*retrained_models: other"):
        N.tabulate_retrain_history(replace(retrained, dataset="other"), best_genome)
    report, latest = N.write_report(best_genome, s, test_metrics, per_seed, fidelity_summary, NO_COMPARE)
    assert report == latest
    for name in ("fitness.png", "block_selection.png", "gene_trajectories.png", "lr_multipliers.png",
                 "training_curves.png", "confusion_matrix.png", "search_fidelity.png"):
        assert f"(figures/{name})" in report
    assert "Not run yet: `kedro run --pipelines compare`" in report
    # switched off: the report says so and links no fidelity figure
    off, _ = N.write_report(best_genome, s, test_metrics, per_seed, replace(fidelity_summary, enabled=False),
                            NO_COMPARE)
    assert "switched off" in off and "search_fidelity.png" not in off
    # a best genome searched on other data than the test metrics is refused
    with pytest.raises(InputMismatchError, match="write_report.*best_genome: other.*test_metrics: a1b2c3d4e5f6"):
        N.write_report(replace(best_genome, dataset="other"), s, test_metrics, per_seed, fidelity_summary, NO_COMPARE)
    with pytest.raises(InputMismatchError, match="search_fidelity_summary: other"):
        N.write_report(best_genome, s, test_metrics, per_seed, replace(fidelity_summary, dataset="other"), NO_COMPARE)


def test_pipeline_nodes_and_datasets():
    p = create_pipeline()
    assert {n.name for n in p.nodes} == {"summarise_generations", "plot_search_figures", "plot_gene_trajectories",
                                         "tabulate_retrain_history", "plot_training_curves", "plot_confusion_matrix",
                                         "plot_search_fidelity", "pareto_front", "plot_pareto_front", "write_report"}
    assert p.inputs() == {"search_population", "search_trials", "best_genome", "retrained_models", "test_metrics",
                          "test_metrics_per_seed", "search_fidelity", "search_fidelity_summary", "compare_links",
                          "backbone", "search_study_store", "picked_genome", "confirmation"}
    # the entries of catalog_reporting.yml as a run sees them (output_dir resolved to its default, data/)
    from evotune.config import ProjectConfigLoader

    resolved = ProjectConfigLoader(str(ROOT / "conf"), base_env="base", default_run_env="base")["catalog"]
    catalog = {k: resolved[k] for k in yaml.safe_load((ROOT / "conf/base/catalog_reporting.yml").read_text())}
    # the comparison's links are read from what `kedro run --pipelines compare` saved (catalog_compare.yml),
    # relative to the latest report
    links = catalog.pop("compare_links")
    compare = {k: resolved[k] for k in yaml.safe_load((ROOT / "conf/base/catalog_compare.yml").read_text())}
    assert links["filepaths"] == {"table": compare["compare_table_markdown"]["filepath"],
                                  "figure": compare["compare_figure"]["filepath"]}
    assert compare["compare_table_markdown"]["versioned"] and compare["compare_figure"]["versioned"]
    assert links["relative_to"] == str(Path(catalog["report_latest"]["filepath"]).parent)
    assert p.all_outputs() == set(catalog)
    for name, cfg in catalog.items():
        assert cfg["metadata"]["kedro-viz"]["layer"] == "reporting"
        assert cfg["filepath"].startswith("data/08_reporting/")
        assert cfg.get("versioned", False) == (not name.endswith("_latest")), name
    # the report's relative links resolve next to the latest report: each figure has a copy there
    latest_dir = Path(catalog["report_latest"]["filepath"]).parent
    for name, fname in labels.FIGURE_FILES.items():
        assert Path(catalog[f"{name}_plot_latest"]["filepath"]) == latest_dir / N.FIGURES_DIR / fname
        assert catalog[f"{name}_plot"]["filepath"] == f"data/08_reporting/figures/{fname}"


def _catalog_entries(file: str, tmp_path: Path) -> dict:
    """The entries of conf/base/``file`` as a run resolves them, with the run's output_dir in ``tmp_path``."""
    from evotune.config import ProjectConfigLoader

    resolved = ProjectConfigLoader(str(ROOT / "conf"), base_env="base", default_run_env="base",
                                   runtime_params={"output_dir": str(tmp_path / "data")})["catalog"]
    return {k: copy.deepcopy(resolved[k]) for k in yaml.safe_load((ROOT / "conf/base" / file).read_text())}


def _run_reporting(tmp_path: Path, version: str, inputs: dict) -> Path:
    """The reporting pipeline through conf/base's catalog_reporting.yml, its files under ``tmp_path``."""
    from kedro.io import DataCatalog, MemoryDataset
    from kedro.runner import SequentialRunner

    cfg = _catalog_entries("catalog_reporting.yml", tmp_path)
    for c in cfg.values():
        c.get("save_args", {}).pop("dpi", None)  # keep the test fast
    catalog = DataCatalog.from_config(cfg, save_version=version)
    for name, data in inputs.items():
        catalog[name] = MemoryDataset(data, copy_mode="assign")
    SequentialRunner().run(create_pipeline(), catalog)
    return tmp_path / "data/08_reporting"


def _images(report: str) -> list[str]:
    return re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)


def _save_comparison(tmp_path: Path, version: str) -> None:
    """The comparison's table and figure, as `kedro run --pipelines compare` saves them (catalog_compare.yml)."""
    from kedro.io import DataCatalog

    cfg = _catalog_entries("catalog_compare.yml", tmp_path)
    entries = {n: cfg[n] for n in ("compare_table_markdown", "compare_figure")}
    compare = DataCatalog.from_config(entries, save_version=version)
    compare.save("compare_table_markdown", "| method | macro acc |\n")
    fig = Figure()
    fig.add_subplot().plot([0, 1])
    compare.save("compare_figure", fig)


def test_pipeline_runs_through_the_catalog(population, trials, best_genome, test_metrics, per_seed, tmp_path,
                                           fidelity_table, fidelity_summary, retrained, backbone_checkpoint):
    from evotune.backbones import build_model
    from evotune.search.store import StudyStore

    backbone = backbone_checkpoint(build_model("resnet10", 3), 3)  # the blocks of BLOCKS
    best_genome = replace(best_genome, backbone_id=backbone.backbone_id)
    inputs = {"search_population": population, "search_trials": trials, "best_genome": best_genome,
              "retrained_models": retrained, "test_metrics": test_metrics, "test_metrics_per_seed": per_seed,
              "search_fidelity": fidelity_table, "search_fidelity_summary": fidelity_summary, "backbone": backbone,
              "search_study_store": StudyStore(None), "picked_genome": best_genome,
              "confirmation": pd.DataFrame({"key": [best_genome.key]})}
    v = "2026-01-01T00.00.00.000Z"
    rep = _run_reporting(tmp_path, v, inputs)
    summary = pd.read_parquet(rep / f"generation_summary.parquet/{v}/generation_summary.parquet")
    assert summary["best_mask"].tolist() == ["001111", "011111", "011111"]
    history = pd.read_parquet(rep / f"retrain_history.parquet/{v}/retrain_history.parquet")
    pd.testing.assert_frame_equal(history, S.training_history(retrained.runs))
    for f in ("fitness", "block_selection", "gene_trajectories", "lr_multipliers", "training_curves",
              "confusion_matrix", "search_fidelity", "pareto_front"):
        assert (rep / f"figures/{f}.png/{v}/{f}.png").stat().st_size > 0
        assert (rep / f"latest/figures/{f}.png").stat().st_size > 0
    front = pd.read_parquet(rep / f"pareto_front.parquet/{v}/pareto_front.parquet")
    assert front["chosen"].sum() == 1 and front.loc[front["chosen"], "key"].item() == best_genome.key
    latest = (rep / "latest/report.md").read_text()
    assert latest == (rep / f"report.md/{v}/report.md").read_text()
    for link in _images(latest):
        assert (rep / "latest" / link).is_file(), link
    assert len(_images(latest)) == 8
    assert "## Accuracy versus cost: the Pareto front" in latest
    assert "Not run yet: `kedro run --pipelines compare`" in latest

    # after `kedro run --pipelines compare`, the next report links its newest table and figure
    _save_comparison(tmp_path, "2026-01-02T00.00.00.000Z")
    _save_comparison(tmp_path, "2026-01-03T00.00.00.000Z")
    rep = _run_reporting(tmp_path, "2026-01-04T00.00.00.000Z", inputs)
    latest = (rep / "latest/report.md").read_text()
    assert "Not run yet" not in latest
    links = re.findall(r"\]\((\.\./compare/[^)]+)\)", latest)
    assert links == ["../compare/comparison.md/2026-01-03T00.00.00.000Z/comparison.md",
                     "../compare/accuracy_vs_trainable.png/2026-01-03T00.00.00.000Z/accuracy_vs_trainable.png"]
    for link in links + _images(latest):
        assert (rep / "latest" / link).is_file(), link
    assert len(_images(latest)) == 9


def test_std_over_seeds_is_the_population_std():
    """SPEC 4b: the authors report the std over seeds with ddof=0."""
    from evotune.metrics import mean_std

    out = mean_std([{"a": 0.8}, {"a": 0.9}, {"a": 1.0}], ["a"])
    assert out["a_mean"] == pytest.approx(0.9)
    assert out["a_std"] == pytest.approx(np.std([0.8, 0.9, 1.0], ddof=0))
    assert mean_std([{"a": 0.5}], ["a"])["a_std"] == 0.0


def test_report_of_a_real_tiny_search_and_retrain(tmp_path, base_parameters, make_split, backbone_checkpoint,
                                                   fidelity_summary):
    """The new figures' data on what the stages really write: a tiny search (population 4, one generation) and
    the retraining of its best genome (2 seeds), through the reporting pipeline and its catalog."""
    import torch

    from evotune.backbones import build_model
    from evotune.pipelines.retrain.nodes import evaluate_on_test, retrain_best_genome
    from evotune.pipelines.search.nodes import confirm_pick, run_search
    from evotune.search.store import StudyStore

    training = {**base_parameters()["training"], "epochs": 2, "patience": 2, "batch_size": 16,
                "eval_batch_size": 64, "device": "cpu"}
    search = {**base_parameters()["search"], "population": 4, "elite": 1, "generations": 1, "seed": 0,
              "seeds": [1], "train_split_pct": 0.5, "study_name": "t"}
    torch.manual_seed(0)
    backbone = backbone_checkpoint(build_model("resnet10", 3), 3)
    train, val, test = make_split(6, 3, seed=0), make_split(4, 3, seed=1), make_split(4, 3, seed=2)
    store = StudyStore(f"sqlite:///{tmp_path}/study.db")
    trials, population, best = run_search(backbone, train, val, store, search, training)
    # the confirmation stage on the search's two best genomes, one seed (4 tiny trainings): the report says how
    confirmation, picked = confirm_pick(backbone, train, val, trials, best,
                                        {"rule": "confirmed", "top_k": 2, "seeds": [3]}, search, training)
    assert picked.pick_rule == "confirmed" and picked.confirm_trainings == 4 and picked.search_best_key == best.key
    retrained = retrain_best_genome(backbone, train, val, picked, {"seeds": [1, 2], "training": {}}, training)
    test_metrics, per_seed = evaluate_on_test(backbone, retrained, test, training)
    off = replace(fidelity_summary, enabled=False, rho=None, ci_low=None, ci_high=None, dataset=best.dataset,
                  backbone_id=best.backbone_id)
    v = "2026-01-01T00.00.00.000Z"
    rep = _run_reporting(tmp_path, v, {
        "search_population": population, "search_trials": trials, "best_genome": best,
        "retrained_models": retrained, "test_metrics": test_metrics, "test_metrics_per_seed": per_seed,
        "search_fidelity": pd.DataFrame(columns=FIDELITY_COLUMNS), "search_fidelity_summary": off,
        "backbone": backbone, "search_study_store": store, "picked_genome": picked, "confirmation": confirmation})

    # every gene of every individual after each generation, named after the blocks, the threshold last
    genes = S.gene_trajectories(population)
    assert list(dict.fromkeys(genes["gene"])) == [*best.block_names, "threshold"]
    assert len(genes) == len(population) * (len(best.block_names) + 1)
    assert sorted(set(genes["generation"])) == [0, 1] and genes["is_best"].sum() == 2 * 7
    final = genes[(genes["generation"] == 1) & genes["is_best"]]
    leader = population[(population["generation"] == 1) & (population["rank"] == 0)].iloc[0]
    assert final["value"].tolist() == [leader[f"gene_{g}"] for g in [*best.block_names, "threshold"]]
    # one row per seed and epoch run, each seed's best epoch flagged once
    history = pd.read_parquet(rep / f"retrain_history.parquet/{v}/retrain_history.parquet")
    assert history.groupby("seed").size().to_dict() == {r.seed: r.epochs_run for r in retrained.runs}
    assert history[history["is_best"]].set_index("seed")["epoch"].to_dict() == \
        {r.seed: r.best_epoch for r in retrained.runs}
    latest = (rep / "latest/report.md").read_text()
    for f in ("gene_trajectories", "training_curves"):
        assert (rep / f"figures/{f}.png/{v}/{f}.png").stat().st_size > 0
        assert f"![{labels.FIGURE_TITLES[f]}](figures/{f}.png)" in latest
        assert (rep / f"latest/figures/{f}.png").stat().st_size > 0
    assert "Not run yet: `kedro run --pipelines compare`" in latest
    # the accuracy-versus-cost front: the table, and the three-objective study optuna-dashboard reads
    import optuna

    from evotune.report.pareto import FRONT_OBJECTIVES, pareto_mask

    front = pd.read_parquet(rep / f"pareto_front.parquet/{v}/pareto_front.parquet")
    valid = trials[trials["valid"] & ~trials["diverged"]]
    assert sorted(front["key"]) == sorted(valid["key"]) and front.loc[front["chosen"], "key"].tolist() == [picked.key]
    assert front.loc[front["mask"] == "1" * 6, "trainable_share"].eq(1.0).all()
    assert f"![{labels.FIGURE_TITLES['pareto_front']}](figures/pareto_front.png)" in latest
    study = optuna.load_study(study_name=f"{best.study_name}-front", storage=store.url)
    assert study.directions == [optuna.study.StudyDirection.MAXIMIZE, optuna.study.StudyDirection.MINIMIZE,
                                optuna.study.StudyDirection.MINIMIZE]
    assert study.metric_names == list(FRONT_OBJECTIVES) and len(study.trials) == len(front)
    on_front = front[pareto_mask(front[["val_acc", "trainable_share", "seconds"]].to_numpy(), (True, False, False))]
    assert sorted(t.user_attrs["key"] for t in study.best_trials) == sorted(on_front["key"])
    assert [t.user_attrs["key"] for t in study.trials if t.user_attrs["chosen"]] == [picked.key]
    assert "## The final pick" in latest and "Rule `confirmed`" in latest and "Cost: 4 trainings" in latest
    # a second report of the same search leaves the study as it is
    _run_reporting(tmp_path, "2026-01-02T00.00.00.000Z", {
        "search_population": population, "search_trials": trials, "best_genome": best,
        "retrained_models": retrained, "test_metrics": test_metrics, "test_metrics_per_seed": per_seed,
        "search_fidelity": pd.DataFrame(columns=FIDELITY_COLUMNS), "search_fidelity_summary": off,
        "backbone": backbone, "search_study_store": store, "picked_genome": picked, "confirmation": confirmation})
    assert [t.number for t in optuna.load_study(study_name=study.study_name, storage=store.url).trials] == \
        [t.number for t in study.trials]
