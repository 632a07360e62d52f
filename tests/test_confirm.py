"""The confirmation stage (evotune.search.confirm): the top genomes, the three pick rules, the parameters."""

import numpy as np
import pandas as pd
import pytest

from evotune.errors import ParameterError
from evotune.search.confirm import CONFIRM_COLUMNS, ConfirmConfig, confirmation_table, pick, top_genomes

BLOCKS = ["a", "b", "head"]


def _trials():
    rows = [("g0/0", 0.30, (0.9, 0.1, 0.7, 0.5)), ("g0/1", 0.20, (0.9, 0.9, 0.9, 0.5)),
            ("g0/2", 1.00, (0.1, 0.1, 0.1, 0.5)), ("g1/0", 0.20, (0.9, 0.9, 0.9, 0.5)),  # same genes as g0/1
            ("g1/1", 0.25, (0.2, 0.9, 0.6, 0.5)), ("g1/2", 0.10, (0.8, 0.8, 0.6, 0.5))]
    return pd.DataFrame([{"key": k, "fitness": f, **{f"gene_{n}": g for n, g in zip([*BLOCKS, "threshold"], genes)}}
                         for k, f, genes in rows])


def test_top_genomes_start_with_the_searchs_best_and_skip_repeats_and_invalid_ones():
    top = top_genomes(_trials(), "g1/2", 3, BLOCKS)
    assert [t["key"] for t in top] == ["g1/2", "g0/1", "g1/1"]  # g1/0 repeats g0/1's genes; g0/2 trains nothing
    assert top[0]["genes"].tolist() == [0.8, 0.8, 0.6, 0.5] and top[1]["fitness"] == 0.20
    assert [t["key"] for t in top_genomes(_trials(), "g1/2", 10, BLOCKS)] == ["g1/2", "g0/1", "g1/1", "g0/0"]
    with pytest.raises(ValueError, match="gene_threshold"):
        top_genomes(_trials().drop(columns="gene_threshold"), "g1/2", 3, BLOCKS)


def _confirmed():
    """Three genomes, 6 (chunk, seed) accuracies each: the search's best is not the confirmed best; the smallest
    is within noise of the confirmed best, the middle one clearly worse."""
    return pd.DataFrame([
        {"key": "s0", "search_rank": 0, "search_fitness": 0.10, "trainable_share": 0.9,
         "val_accs": [0.80, 0.82, 0.79, 0.81, 0.80, 0.80]},
        {"key": "s1", "search_rank": 1, "search_fitness": 0.12, "trainable_share": 0.5,
         "val_accs": [0.84, 0.86, 0.83, 0.85, 0.84, 0.84]},
        {"key": "s2", "search_rank": 2, "search_fitness": 0.13, "trainable_share": 0.2,
         "val_accs": [0.85, 0.83, 0.86, 0.82, 0.84, 0.83]},
    ])


def test_the_three_pick_rules():
    t = _confirmed()
    assert pick(t, "best")["picked"].tolist() == [True, False, False]
    confirmed = pick(t, "confirmed")
    assert confirmed["picked"].tolist() == [False, True, False]
    assert confirmed["confirmed_val_acc"].tolist() == pytest.approx([np.mean(v) for v in t["val_accs"]])
    # paired differences to the confirmed best (s1): s0 clearly worse, s2 not significantly
    assert confirmed["diff_to_best"].tolist() == pytest.approx([-0.04, 0.0, np.mean(
        np.subtract(t.at[2, "val_accs"], t.at[1, "val_accs"]))])
    assert confirmed["not_worse"].tolist() == [False, True, True]
    assert confirmed.at[0, "diff_high"] < 0 <= confirmed.at[2, "diff_high"]
    parsimonious = pick(t, "parsimonious")
    assert parsimonious["picked"].tolist() == [False, False, True]  # the smallest share among the not-worse
    # were the smallest clearly worse, parsimonious would keep the confirmed best
    worse = t.copy()
    worse.at[2, "val_accs"] = [0.70, 0.71, 0.70, 0.72, 0.70, 0.71]
    assert pick(worse, "parsimonious")["picked"].tolist() == [False, True, False]
    with pytest.raises(ValueError, match="unknown pick rule"):
        pick(t, "luckiest")
    out = confirmation_table(parsimonious)
    assert list(out.columns) == CONFIRM_COLUMNS and out["trainings"].isna().all()


def test_confirm_parameters_are_checked_with_one_clear_message(base_parameters):
    base = base_parameters()["confirm"]
    cfg = ConfirmConfig.from_params(base)
    assert cfg.rule == "best" and not cfg.trains and cfg.top_k >= 2 and len(cfg.seeds) > 3
    for bad, match in [({"rule": "luckiest"}, r"confirm\.rule must be one of best, confirmed, parsimonious"),
                       ({"top_k": 0}, r"confirm\.top_k must be at least 1"),
                       ({"rule": "parsimonious", "top_k": 1}, r"parsimonious needs confirm\.top_k >= 2"),
                       ({"seeds": []}, r"confirm\.seeds must list at least one seed"),
                       ({"seeds": [1, 1]}, r"confirm\.seeds must be distinct")]:
        with pytest.raises(ParameterError, match=match):
            ConfirmConfig.from_params({**base, **bad})
    with pytest.raises(ParameterError, match=r"confirm\.top_k"):
        ConfirmConfig.from_params({"rule": "best", "seeds": [1]})
