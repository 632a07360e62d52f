"""Classification metrics from a confusion matrix (rows = true class, columns = predicted)."""

from __future__ import annotations

import numpy as np


def classification_metrics(conf) -> dict[str, float]:
    """Accuracy, macro (class-balanced) accuracy, macro F1 and Cohen's kappa."""
    c = np.asarray(conf, dtype=float)
    total = c.sum()
    if total == 0:
        raise ValueError("Empty confusion matrix: the evaluation split has no images.")
    tp = np.diag(c)
    support = c.sum(1)
    predicted = c.sum(0)
    present = support > 0
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    po = tp.sum() / total
    pe = float((support * predicted).sum()) / total**2
    kappa = 1.0 if pe == 1.0 else (po - pe) / (1.0 - pe)
    return {
        "accuracy": float(po),
        "macro_accuracy": float(recall[present].mean()),
        "macro_f1": float(f1[present].mean()),
        "cohen_kappa": float(kappa),
    }


def mean_std(rows: list[dict[str, float]], keys) -> dict[str, float]:
    """Mean and std over seeds for each key. The std is the population std (ddof=0), the
    authors' convention (SPEC section 4b)."""
    out = {}
    for k in keys:
        v = np.array([r[k] for r in rows], dtype=float)
        out[f"{k}_mean"] = float(v.mean())
        out[f"{k}_std"] = float(v.std(ddof=0))
    return out
