"""The comparison with the baselines (SPEC section 6): the paper-style table, as a table, as
markdown, and test accuracy against the trainable-parameter share.

BioTune's row comes from the default pipeline's outputs (``test_metrics``,
``test_metrics_per_seed``, ``best_genome``); each compared method's from its
:class:`~evotune.evaluation.MethodMetrics`.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from ..errors import ParameterError
from ..evaluation import MethodMetrics, TestMetrics
from ..methods import METHODS
from ..search.records import GenomeRecord

TABLE_COLUMNS = [
    "method", "variant", "kind", "test_accuracy", "accuracy_mean", "accuracy_std", "macro_accuracy_mean",
    "macro_accuracy_std", "macro_f1_mean", "macro_f1_std", "trainable_params", "total_params", "trainable_pct",
    "trainings", "evaluations", "compute_seconds", "wall_seconds", "n_seeds", "selected_by",
]


def _row(m: TestMetrics, *, method: str, variant: str, trainings: int, evaluations: int | None,
         compute_seconds: float, wall_seconds: float | None, selected_by: str | None) -> dict:
    return {
        "method": method,
        "variant": variant,
        "kind": "method",
        "test_accuracy": f"{100 * m.accuracy_mean:.2f} ± {100 * m.accuracy_std:.2f}",
        "accuracy_mean": m.accuracy_mean, "accuracy_std": m.accuracy_std,
        "macro_accuracy_mean": m.macro_accuracy_mean, "macro_accuracy_std": m.macro_accuracy_std,
        "macro_f1_mean": m.macro_f1_mean, "macro_f1_std": m.macro_f1_std,
        "trainable_params": m.trainable_params, "total_params": m.total_params,
        "trainable_pct": 100.0 * m.trainable_params / m.total_params,
        "trainings": trainings, "evaluations": evaluations, "compute_seconds": compute_seconds,
        "wall_seconds": wall_seconds, "n_seeds": m.n_seeds, "selected_by": selected_by,
    }


def biotune_row(test_metrics: TestMetrics, test_metrics_per_seed: pd.DataFrame, best_genome: GenomeRecord) -> dict:
    """BioTune's row from the default pipeline's outputs."""
    retrain_s = float(test_metrics_per_seed["train_seconds"].sum())
    return _row(
        test_metrics, method="biotune", variant=f"biotune[{best_genome.mask}]",
        trainings=int(best_genome.trainings) + int(test_metrics.n_seeds),
        evaluations=best_genome.evaluations,
        compute_seconds=float(best_genome.search_seconds) + retrain_s,
        wall_seconds=None, selected_by=None,
    )


def method_rows(m: MethodMetrics) -> tuple[dict, list[dict]]:
    """A compared method's row, and one ``variant`` row per variant when it has several (surgical)."""
    row = _row(m, method=m.method, variant=m.variant, trainings=m.trainings, evaluations=m.evaluations,
               compute_seconds=m.compute_seconds, wall_seconds=m.wall_seconds, selected_by=m.selected_by)
    variants = []
    if len(m.variants) > 1:
        for v in m.variants:
            variants.append({
                "method": m.method, "variant": v.variant, "kind": "variant",
                "test_accuracy": f"{100 * v.accuracy_mean:.2f} ± {100 * v.accuracy_std:.2f}",
                "accuracy_mean": v.accuracy_mean, "accuracy_std": v.accuracy_std,
                "macro_accuracy_mean": v.macro_accuracy_mean, "macro_f1_mean": v.macro_f1_mean,
                "trainable_params": v.trainable_params, "total_params": m.total_params,
                "trainable_pct": 100.0 * v.trainable_share,
                "n_seeds": m.n_seeds, "selected_by": f"val {v.val_macro_acc_mean:.4f}",
            })
    return row, variants


def comparison_table(methods: Sequence[str], test_metrics: TestMetrics, test_metrics_per_seed: pd.DataFrame,
                     best_genome: dict, method_metrics: Sequence[MethodMetrics]) -> pd.DataFrame:
    """One row per method (BioTune first, then ``methods`` in the order of
    :data:`evotune.methods.METHODS`), then one ``variant`` row per surgical block.

    ``test_accuracy`` is mean ± std over seeds of the test accuracy, in %;
    ``trainable_pct`` the trained share of the model's parameters (LoRA: its
    adapters and the head over the original model); ``trainings`` the number of
    training runs the method needed (search included); ``compute_seconds`` the
    sum of their durations (search included, BioTune too); ``wall_seconds``
    the wall time of the method's nodes in this run (not known for BioTune).
    """
    got = [m.method for m in method_metrics]
    if got != [m for m in METHODS if m in methods]:
        raise ParameterError(
            f"compare.methods is {list(methods)} but the compare pipeline was built for {got}: run it with the "
            "project's `kedro run --pipelines compare`, which builds it from the run's parameters."
        )
    rows = [biotune_row(test_metrics, test_metrics_per_seed, best_genome)]
    extra = []
    for m in method_metrics:
        row, variants = method_rows(m)
        rows.append(row)
        extra.extend(variants)
    table = pd.DataFrame(rows + extra)
    for col in TABLE_COLUMNS:
        if col not in table:
            table[col] = None
    for col in ("trainable_params", "total_params", "trainings", "evaluations", "n_seeds"):
        table[col] = pd.to_numeric(table[col]).round().astype("Int64")
    return table[TABLE_COLUMNS]


def comparison_markdown(table: pd.DataFrame) -> str:
    """The table as markdown, paper-style."""
    lines = ["| method | variant | test acc (%) | macro F1 | trainable params | trainings | compute (s) |",
             "|---|---|---|---|---|---|---|"]
    for r in table.to_dict("records"):
        f1 = "" if r.get("macro_f1_mean") is None or pd.isna(r["macro_f1_mean"]) else f"{100 * r['macro_f1_mean']:.2f}"
        tr = "" if r.get("trainings") is None or pd.isna(r["trainings"]) else f"{int(r['trainings'])}"
        cs = "" if r.get("compute_seconds") is None or pd.isna(r["compute_seconds"]) else f"{r['compute_seconds']:.0f}"
        lines.append(f"| {r['method']} | {r['variant']} | {r['test_accuracy']} | {f1} | "
                     f"{r['trainable_pct']:.3g} % | {tr} | {cs} |")
    return "\n".join(lines) + "\n"
def comparison_figure(table: pd.DataFrame):
    """Test accuracy vs trainable-parameter share (log x), one point per method, error bars = std."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    rows = table[table["kind"] == "method"]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    colors = plt.get_cmap("tab20")
    for i, r in enumerate(rows.to_dict("records")):
        x = max(float(r["trainable_pct"]), 1e-6)
        y, e = 100 * float(r["accuracy_mean"]), 100 * float(r["accuracy_std"] or 0.0)
        marker = "*" if r["method"] == "biotune" else "o"
        ax.errorbar([x], [y], yerr=[e], fmt=marker, ms=12 if marker == "*" else 7, capsize=4,
                    color=colors(i % 20), label=r["method"])
        ax.annotate(r["method"], (x, y), textcoords="offset points", xytext=(6, 4), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters (% of the model, log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Test accuracy vs trainable parameters (mean ± std over seeds)")
    ax.grid(True, which="both", alpha=0.3)
    if len(rows):
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    return fig
