"""The comparison's statistics (evotune.report.significance): known numbers, known intervals and verdicts."""

import math

import pytest

from evotune.report.significance import (
    BETTER,
    NO_CI,
    SAME,
    WORSE,
    compare_to_reference,
    seed_std,
    t_interval,
    verdict,
)

T_975_DF2 = 4.302652729911275  # Student's t, 97.5 % quantile, 2 degrees of freedom (tables)


def test_t_interval_of_known_numbers():
    ci = t_interval([0.80, 0.82, 0.84])
    half = T_975_DF2 * 0.02 / math.sqrt(3)
    assert ci.mean == pytest.approx(0.82) and ci.n == 3 and ci.available
    assert (ci.low, ci.high) == pytest.approx((0.82 - half, 0.82 + half))


def test_one_resampling_has_no_interval():
    ci = t_interval([0.7])
    assert ci.mean == 0.7 and math.isnan(ci.low) and math.isnan(ci.high) and not ci.available
    assert verdict(ci) == NO_CI
    out = compare_to_reference({"biotune": {0: 0.7}, "lora": {0: 0.9}})
    assert out["lora"].verdict == NO_CI and out["lora"].diff.mean == pytest.approx(0.2)


def test_paired_differences_and_verdicts():
    biotune = {0: 0.80, 1: 0.82, 2: 0.84}
    out = compare_to_reference({
        "biotune": biotune,
        "up": {0: 0.90, 1: 0.91, 2: 0.92},      # d = .10, .09, .08
        "down": {0: 0.70, 1: 0.73, 2: 0.76},    # d = -.10, -.09, -.08
        "tie": {0: 0.85, 1: 0.77, 2: 0.84},     # d = .05, -.05, 0
        # unpaired, these intervals would overlap BioTune's; paired, the constant gap is clear
        "paired": {0: 0.81, 1: 0.83, 2: 0.85},  # d = .01 each time
    })
    assert out["biotune"].diff is None and out["biotune"].verdict is None
    up = out["up"].diff
    half = T_975_DF2 * 0.01 / math.sqrt(3)
    assert (up.mean, up.low, up.high) == pytest.approx((0.09, 0.09 - half, 0.09 + half))
    assert out["up"].verdict == BETTER and out["down"].verdict == WORSE and out["tie"].verdict == SAME
    assert out["paired"].diff.low == pytest.approx(0.01) and out["paired"].diff.high == pytest.approx(0.01)
    assert out["paired"].verdict == BETTER


def test_the_differences_must_be_paired():
    with pytest.raises(ValueError, match="same ones"):
        compare_to_reference({"biotune": {0: 0.8, 1: 0.8}, "lora": {0: 0.8, 2: 0.8}})
    with pytest.raises(ValueError, match="'biotune'"):
        compare_to_reference({"lora": {0: 0.8}})


def test_seed_std_is_population_std_within_a_resampling():
    assert seed_std([[0.8, 0.9], [0.5, 0.5]]) == pytest.approx((0.05 + 0.0) / 2)
