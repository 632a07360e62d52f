"""The test metrics (evotune.metrics) against values worked out by hand and against scikit-learn."""

from fractions import Fraction

import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score, f1_score
from sklearn.metrics import confusion_matrix as sk_confusion_matrix

from evotune.metrics import classification_metrics

#: rows = true class, columns = predicted: 16 images, 3 classes
CONF = [[5, 1, 0],
        [2, 3, 1],
        [0, 0, 4]]


def test_known_values_worked_out_by_hand():
    m = classification_metrics(CONF)
    # accuracy 12/16; recalls 5/6, 3/6, 4/4; precisions 5/7, 3/4, 4/5
    assert m["accuracy"] == pytest.approx(12 / 16)
    assert m["macro_accuracy"] == pytest.approx(float((Fraction(5, 6) + Fraction(1, 2) + 1) / 3))
    # F1 per class = 2PR / (P + R): 10/13, 3/5, 8/9
    assert m["macro_f1"] == pytest.approx(float((Fraction(10, 13) + Fraction(3, 5) + Fraction(8, 9)) / 3))
    # kappa = (po - pe) / (1 - pe), pe = sum(row total x column total) / n^2 = (6*7 + 6*4 + 4*5) / 256
    assert m["cohen_kappa"] == pytest.approx(53 / 85)


def test_perfect_and_chance_level_predictions():
    assert classification_metrics(np.diag([3, 2, 5])) == pytest.approx(
        {"accuracy": 1.0, "macro_accuracy": 1.0, "macro_f1": 1.0, "cohen_kappa": 1.0})
    # every image predicted as class 0: kappa 0 (no better than chance), F1 of class 0 = 2 * (1/2 * 1) / (3/2)
    m = classification_metrics([[2, 0], [2, 0]])
    assert m["cohen_kappa"] == pytest.approx(0.0) and m["accuracy"] == pytest.approx(0.5)
    assert m["macro_f1"] == pytest.approx((2 / 3 + 0.0) / 2) and m["macro_accuracy"] == pytest.approx(0.5)


@pytest.mark.parametrize("seed", range(5))
def test_agrees_with_scikit_learn(seed):
    """Random labels, including a class that is predicted but absent from the truth: it does not count in the
    macro averages (scikit-learn's ``labels=`` the classes present)."""
    rng = np.random.default_rng(seed)
    k = 5
    true = rng.integers(0, k - 1, size=60)  # class k-1 never true
    pred = np.where(rng.random(60) < 0.6, true, rng.integers(0, k, size=60))
    conf = sk_confusion_matrix(true, pred, labels=list(range(k)))
    m = classification_metrics(conf)
    present = sorted(set(true.tolist()))
    assert m["macro_f1"] == pytest.approx(f1_score(true, pred, labels=present, average="macro", zero_division=0))
    assert m["cohen_kappa"] == pytest.approx(cohen_kappa_score(true, pred))
    assert m["accuracy"] == pytest.approx(float(np.mean(true == pred)))


def test_classes_seen_once_or_never_predicted():
    """A class with one true image counts in the macro averages; a class never predicted has precision and F1 0
    (no division by zero); one class only, always right, has kappa 1 (chance agreement is 1 there)."""
    m = classification_metrics([[2, 0, 0],
                                [0, 1, 0],
                                [1, 0, 0]])
    # recalls 1, 1, 0; precisions 2/3, 1, 0 (never predicted); F1 4/5, 1, 0; pe = (2*3 + 1*1 + 1*0) / 16
    assert m["accuracy"] == pytest.approx(3 / 4) and m["macro_accuracy"] == pytest.approx(2 / 3)
    assert m["macro_f1"] == pytest.approx((4 / 5 + 1 + 0) / 3)
    assert m["cohen_kappa"] == pytest.approx((12 / 16 - 7 / 16) / (1 - 7 / 16))
    assert classification_metrics([[4]]) == pytest.approx(
        {"accuracy": 1.0, "macro_accuracy": 1.0, "macro_f1": 1.0, "cohen_kappa": 1.0})


def test_an_empty_matrix_is_refused():
    with pytest.raises(ValueError, match="^Empty confusion matrix: the evaluation split has no images"):
        classification_metrics(np.zeros((3, 3)))
