"""The comparison with the baselines (SPEC section 6): the paper-style table, as a table, as
markdown, and test macro accuracy against the trainable-parameter share.

Every row, BioTune's included, comes from the method's
:class:`~evotune.evaluation.MethodMetrics` over ``R`` resamplings x the seeds; the intervals
and verdicts from :mod:`evotune.report.significance`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd

from ..errors import ParameterError
from ..evaluation import MethodMetrics
from ..methods import BIOTUNE, METHODS
from .significance import CONFIDENCE, NO_CI, compare_to_reference, seed_std

TABLE_COLUMNS = [
    "method", "variant", "kind", "test_macro_accuracy", "macro_accuracy_mean", "macro_accuracy_ci_low",
    "macro_accuracy_ci_high", "diff_to_biotune", "diff_mean", "diff_ci_low", "diff_ci_high", "verdict",
    "test_accuracy", "accuracy_mean", "accuracy_std", "macro_accuracy_std", "macro_f1_mean", "trainable_params",
    "total_params", "trainable_pct", "trainings", "evaluations", "compute_seconds", "wall_seconds", "n_seeds",
    "n_resamplings", "selected_by",
]


def _pct(x: float) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.2f}"


def _with_ci(mean: float, low: float, high: float, signed: bool = False) -> str:
    m = f"{100 * mean:+.2f}" if signed else f"{100 * mean:.2f}"
    if math.isnan(low):
        return f"{m} [n/a]"
    return f"{m} [{100 * low:.2f}, {100 * high:.2f}]" if not signed else f"{m} [{100 * low:+.2f}, {100 * high:+.2f}]"


def chosen_variants(m: MethodMetrics) -> str:
    """The variant cell of a method's row: its variant, or, when validation chose different variants on
    different resamplings, each resampling's choice in order (``surgical[layer4, layer3, layer3]``)."""
    chosen = [p.variant for p in m.resamplings]
    if len(set(chosen)) <= 1:
        return m.variant
    prefix = f"{m.method}["
    if all(v.startswith(prefix) and v.endswith("]") for v in chosen):
        return prefix + ", ".join(v[len(prefix):-1] for v in chosen) + "]"
    return " / ".join(chosen)


def method_rows(m: MethodMetrics, sig) -> tuple[dict, list[dict]]:
    """A method's row (with its significance ``sig``), and one ``variant`` row per variant when it has
    several (surgical: the per-block means over the resamplings)."""
    per_r = m.resamplings
    nan = math.nan
    diff = sig.diff
    row = {
        "method": m.method, "variant": chosen_variants(m), "kind": "method",
        "test_macro_accuracy": _with_ci(sig.score.mean, sig.score.low, sig.score.high),
        "macro_accuracy_mean": sig.score.mean, "macro_accuracy_ci_low": sig.score.low,
        "macro_accuracy_ci_high": sig.score.high,
        "diff_to_biotune": "" if diff is None else _with_ci(diff.mean, diff.low, diff.high, signed=True),
        "diff_mean": nan if diff is None else diff.mean, "diff_ci_low": nan if diff is None else diff.low,
        "diff_ci_high": nan if diff is None else diff.high, "verdict": sig.verdict or "",
        "accuracy_mean": m.accuracy_mean, "accuracy_std": seed_std([p.accuracy for p in per_r]),
        "macro_accuracy_std": seed_std([p.macro_accuracy for p in per_r]),
        "macro_f1_mean": m.macro_f1_mean, "trainable_params": m.trainable_params, "total_params": m.total_params,
        "trainable_pct": 100.0 * m.trainable_share, "trainings": m.trainings, "evaluations": m.evaluations,
        "compute_seconds": m.compute_seconds, "wall_seconds": m.wall_seconds, "n_seeds": m.n_seeds,
        "n_resamplings": len(per_r), "selected_by": m.selected_by,
    }
    row["test_accuracy"] = f"{100 * row['accuracy_mean']:.2f} ± {100 * row['accuracy_std']:.2f}"
    variants = []
    if len(m.variants) > 1:
        for v in m.variants:
            variants.append({
                "method": m.method, "variant": v.variant, "kind": "variant",
                "test_macro_accuracy": f"{100 * v.macro_accuracy_mean:.2f}",
                "macro_accuracy_mean": v.macro_accuracy_mean, "test_accuracy": f"{100 * v.accuracy_mean:.2f}",
                "accuracy_mean": v.accuracy_mean, "macro_f1_mean": v.macro_f1_mean,
                "trainable_params": v.trainable_params, "total_params": m.total_params,
                "trainable_pct": 100.0 * v.trainable_share, "n_seeds": m.n_seeds, "n_resamplings": len(per_r),
                "selected_by": f"val {v.val_macro_acc_mean:.4f}",
            })
    return row, variants


def comparison_table(methods: Sequence[str], method_metrics: Sequence[MethodMetrics]) -> pd.DataFrame:
    """One row per method (BioTune first, then ``methods`` in the order of
    :data:`evotune.methods.METHODS`), then one ``variant`` row per surgical block.

    ``macro_accuracy_mean`` is the mean over the resamplings of the mean over seeds of the test
    macro accuracy (the headline metric), ``macro_accuracy_ci_*`` its 95 % t-interval over the
    resamplings; ``diff_*`` the paired difference to BioTune on the same resamplings and
    ``verdict`` what its interval says (:mod:`evotune.report.significance`); ``accuracy_std`` /
    ``macro_accuracy_std`` the std over seeds within a resampling (ddof=0), averaged;
    ``trainable_pct`` the trained share of the model's parameters (LoRA: its adapters and the
    head over the original model; searches: averaged over the resamplings' genomes);
    ``trainings`` the training runs the method needed over all resamplings (search included);
    ``compute_seconds`` the sum of their durations; ``wall_seconds`` the wall time of its nodes.
    """
    got = [m.method for m in method_metrics]
    want = [BIOTUNE] + [m for m in METHODS if m in methods]
    if got != want:
        raise ParameterError(
            f"compare.methods is {list(methods)} but the compare pipeline was built for {got[1:]}: run it with "
            "the project's `kedro run --pipelines compare`, which builds it from the run's parameters."
        )
    scores = {m.method: {p.resampling: p.macro_accuracy_mean for p in m.resamplings} for m in method_metrics}
    sig = compare_to_reference(scores, BIOTUNE)
    rows, extra = [], []
    for m in method_metrics:
        row, variants = method_rows(m, sig[m.method])
        rows.append(row)
        extra.extend(variants)
    table = pd.DataFrame(rows + extra)
    for col in TABLE_COLUMNS:
        if col not in table:
            table[col] = None
    for col in ("trainable_params", "total_params", "trainings", "evaluations", "n_seeds", "n_resamplings"):
        table[col] = pd.to_numeric(table[col]).round().astype("Int64")
    for col in ("macro_accuracy_ci_low", "macro_accuracy_ci_high", "diff_mean", "diff_ci_low", "diff_ci_high",
                "accuracy_std", "macro_accuracy_std", "compute_seconds", "wall_seconds"):
        table[col] = pd.to_numeric(table[col], errors="coerce").astype(float)
    return table[TABLE_COLUMNS]


def caption(table: pd.DataFrame) -> str:
    """What the numbers of the table are (its conventions), in one paragraph."""
    methods = table[table["kind"] == "method"]
    r = int(methods["n_resamplings"].max()) if len(methods) else 0
    s = int(methods["n_seeds"].max()) if len(methods) else 0
    ci = (f"[{int(CONFIDENCE * 100)} % CI]: t-interval over the R = {r} resampling means (df = {r - 1})"
          if r > 1 else f"no CI with R = 1 resampling (verdict: {NO_CI}; set compare.resamplings >= 2)")
    return (
        f"Each method is trained with {s} seed(s) on each of R = {r} resampling(s) of the data split (resampling 0 "
        f"is the run's own split) and tested once per training. Test macro accuracy (%): mean over the resamplings "
        f"of the mean over seeds; {ci}. Paired diff to BioTune (percentage points): per resampling, the method's "
        "mean minus BioTune's, then mean and interval as above; verdict: better / worse when the interval lies "
        "above / below 0, no significant difference otherwise. Test accuracy (%): mean ± std over seeds within a "
        "resampling (ddof = 0, the authors' convention), averaged over resamplings. Trainable params: share of the "
        "model's parameters trained (searches: averaged over their genomes). Trainings and compute: all resamplings, "
        "searches (and a pick rule's confirmation) included. Surgical's block rows: per-block means over the "
        "resamplings (the method's row reports the block chosen by validation on each resampling, and names each "
        "resampling's choice in order when they differ)."
    )


def comparison_markdown(table: pd.DataFrame) -> str:
    """The table as markdown, paper-style, with its caption."""
    lines = ["| method | variant | test macro acc (%) [95 % CI] | paired diff to BioTune (pp) [95 % CI] | verdict | "
             "test acc (%) | macro F1 (%) | trainable params | trainings | compute (s) |",
             "|---|---|---|---|---|---|---|---|---|---|"]

    def cell(r: dict, key: str, fmt=str) -> str:
        v = r.get(key)
        return "" if v is None or pd.isna(v) else fmt(v)

    for r in table.to_dict("records"):
        lines.append(
            f"| {r['method']} | {r['variant']} | {r['test_macro_accuracy']} | {cell(r, 'diff_to_biotune')} | "
            f"{cell(r, 'verdict')} | {r['test_accuracy']} | {cell(r, 'macro_f1_mean', _pct)} | "
            f"{r['trainable_pct']:.3g} % | {cell(r, 'trainings', lambda v: str(int(v)))} | "
            f"{cell(r, 'compute_seconds', lambda v: f'{v:.0f}')} |")
    return "\n".join(lines) + "\n\n" + caption(table) + "\n"


def label_offsets(points: Sequence[tuple[float, float]], min_gap: float = 11.0) -> list[float]:
    """Vertical offsets (in points) for the labels of ``points`` (display coordinates, in points) so that
    labels closer than ``min_gap`` vertically and ~80 points horizontally do not overlap: from the lowest
    up, each label is pushed above the one it would collide with."""
    order = sorted(range(len(points)), key=lambda i: (points[i][1], points[i][0]))
    placed: list[tuple[float, float]] = []  # (x, label y)
    offsets = [0.0] * len(points)
    for i in order:
        x, y = points[i]
        label_y = y
        for px, py in sorted(placed, key=lambda p: p[1]):
            if abs(px - x) < 80 and abs(py - label_y) < min_gap:
                label_y = py + min_gap
        placed.append((x, label_y))
        offsets[i] = label_y - y
    return offsets


def comparison_figure(table: pd.DataFrame):
    """Test macro accuracy vs trainable-parameter share (log x), one point per method, error bars = the
    95 % CI over the resamplings (none with one resampling); labels moved apart where methods crowd."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    rows = table[table["kind"] == "method"].to_dict("records")
    fig, ax = plt.subplots(figsize=(8, 4.5))
    colors = plt.get_cmap("tab20")
    xy = []
    for i, r in enumerate(rows):
        x = max(float(r["trainable_pct"]), 1e-6)
        y = 100 * float(r["macro_accuracy_mean"])
        low, high = r.get("macro_accuracy_ci_low"), r.get("macro_accuracy_ci_high")
        has_ci = low is not None and high is not None and not (pd.isna(low) or pd.isna(high))
        yerr = [[y - 100 * float(low)], [100 * float(high) - y]] if has_ci else None
        marker = "*" if r["method"] == BIOTUNE else "o"
        ax.errorbar([x], [y], yerr=yerr, fmt=marker, ms=12 if marker == "*" else 7, capsize=4,
                    color=colors(i % 20), label=r["method"])
        xy.append((x, y))
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters (% of the model, log scale)")
    ax.set_ylabel("test macro accuracy (%)")
    n_r = int(max([r["n_resamplings"] or 1 for r in rows], default=1))
    ax.set_title("Test macro accuracy vs trainable parameters"
                 + (f" (mean, 95 % CI over {n_r} resamplings)" if n_r > 1 else " (one split: no CI)"))
    ax.grid(True, which="both", alpha=0.3)
    if rows:
        to_pt = 72.0 / fig.dpi
        xlo, xhi = ax.get_xlim()
        ax.set_xlim(xlo, xhi * 4)  # room for the labels right of the 100 % points
        for _ in range(3):  # room above the highest label: raise the top of the axes until the labels fit
            fig.canvas.draw()
            disp = [tuple(v * to_pt for v in ax.transData.transform((x, y))) for x, y in xy]
            offsets = label_offsets(disp)
            top_pt = ax.transAxes.transform((0, 1))[1] * to_pt
            need = max(py + dy for (_, py), dy in zip(disp, offsets)) + 14 - top_pt
            if need <= 0:
                break
            lo, hi = ax.get_ylim()
            ax.set_ylim(lo, hi + need / max(top_pt - ax.transAxes.transform((0, 0))[1] * to_pt, 1.0) * (hi - lo))
        for r, (x, y), dy in zip(rows, xy, offsets):
            ax.annotate(r["method"], (x, y), textcoords="offset points", xytext=(7, 3 + dy), fontsize=8,
                        arrowprops={"arrowstyle": "-", "lw": 0.5, "color": "0.5"} if dy else None)
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    return fig
