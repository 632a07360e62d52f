"""The accuracy-versus-cost front (evotune.report.pareto): dominance, the table, the figure, the dashboard's study."""

import numpy as np
import optuna
import pandas as pd
import pytest

from evotune.report.pareto import (
    FRONT_OBJECTIVES,
    front_markdown,
    front_study_name,
    front_table,
    pareto_mask,
    plot_front,
    record_front_study,
)

SIZES = [10, 20, 30, 40]  # parameters per block (head last); the model has 100 + 20 outside the blocks
TOTAL = 120


def _trials(rows):
    return pd.DataFrame([{"key": k, "generation": g, "role": "x", "chunk": 0, "mask": m, "valid": "1" in m,
                          "diverged": d, "fitness": f, "seconds": s, "gene_a": 0.1, "gene_threshold": 0.5}
                         for k, g, m, f, s, d in rows])


TRIALS = _trials([
    ("a", 0, "0001", 0.30, 10.0, False),   # share 40/120, acc .70
    ("b", 0, "1001", 0.20, 20.0, False),   # share 50/120, acc .80
    ("c", 1, "1101", 0.25, 30.0, False),   # share 70/120, acc .75: dominated by b on both fronts
    ("d", 1, "1111", 0.15, 5.0, False),    # share 100/120, acc .85, fastest
    ("e", 1, "0000", 1.00, 0.0, False),    # trains nothing: left out
    ("f", 2, "0111", 0.05, 40.0, True),    # diverged: left out
])


def test_pareto_mask_keeps_the_non_dominated_points_and_ties():
    v = np.array([[0.7, 0.3], [0.8, 0.4], [0.75, 0.6], [0.8, 0.4], [0.6, 0.3]])
    assert pareto_mask(v, (True, False)).tolist() == [True, True, False, True, False]
    with pytest.raises(ValueError, match="criteria"):
        pareto_mask(v, (True,))


def test_front_table_flags_both_fronts_and_the_chosen_genome():
    t = front_table(TRIALS, SIZES, TOTAL, "b")
    assert t["key"].tolist() == ["a", "b", "c", "d"]  # by trainable share
    assert t["trainable_share"].tolist() == pytest.approx([40 / 120, 50 / 120, 70 / 120, 100 / 120])
    assert t["val_acc"].tolist() == pytest.approx([0.70, 0.80, 0.75, 0.85])
    assert t["on_share_front"].tolist() == [True, True, False, True]
    assert t["on_time_front"].tolist() == [False, False, False, True]  # d: most accurate and fastest
    assert t["chosen"].tolist() == [False, True, False, False]
    md = front_markdown(t)
    assert "`c`" not in md and "| `b` | `1001` | 80.00 | 41.7 |" in md and "**chosen**" in md
    fig = plot_front(t)
    assert len(fig.axes) == 2 and "trainable" in fig.axes[0].get_xlabel() and "time" in fig.axes[1].get_xlabel()
    with pytest.raises(ValueError, match="mask"):
        front_table(TRIALS.drop(columns="mask"), SIZES, TOTAL, None)


def test_the_front_study_is_what_optuna_dashboard_reads(tmp_path):
    url = f"sqlite:///{tmp_path}/s.db"
    t = front_table(TRIALS, SIZES, TOTAL, "b")
    assert record_front_study(None, "biotune-x", t) is None  # in memory: nothing outlives the run
    name = record_front_study(url, "biotune-x", t)
    assert name == front_study_name("biotune-x") == "biotune-x-front"
    study = optuna.load_study(study_name=name, storage=url)
    assert study.metric_names == list(FRONT_OBJECTIVES) and len(study.directions) == 3
    # Optuna's own Pareto front (what the dashboard draws) over the three objectives: d dominates c
    assert sorted(tr.user_attrs["key"] for tr in study.best_trials) == ["a", "b", "d"]
    assert study.trials[1].params == {"gene_a": 0.1, "gene_threshold": 0.5}
    # the same table again: untouched; another chosen genome or other evaluations: rewritten
    record_front_study(url, "biotune-x", t)
    assert len(optuna.load_study(study_name=name, storage=url).trials) == 4
    record_front_study(url, "biotune-x", front_table(TRIALS.iloc[:2], SIZES, TOTAL, "a"))
    again = optuna.load_study(study_name=name, storage=url)
    assert sorted(tr.user_attrs["key"] for tr in again.trials) == ["a", "b"]
    assert [tr.user_attrs["key"] for tr in again.trials if tr.user_attrs["chosen"]] == ["a"]
