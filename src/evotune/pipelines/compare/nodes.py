"""Nodes of the comparison (SPEC section 6): baselines trained and tested like BioTune.

* Plan methods (full fine-tuning, linear probe, surgical, Auto-RGN, L2-SP,
  L1-SP, LoRA): :func:`train_plan_method` trains every variant of the method
  once per seed on the whole training pool with early stopping on validation
  (the training config of BioTune's retrain: ``training`` updated with
  ``retrain.training``), keeping each seed's best state.
* Search baselines (DEFT, random search, TPE): :func:`search_baseline` runs
  the search with BioTune's settings (``search``, ``training``) and budget
  through the same runner (:func:`evotune.search.runner.run_baseline`), each evaluation
  recorded in its own Optuna study (resumable like BioTune's);
  :func:`retrain_searched_genome` then retrains the best genome with
  BioTune's own :func:`~evotune.pipelines.retrain.nodes.retrain_best_genome`.
* :func:`evaluate_method` tests every trained variant once with BioTune's
  :func:`~evotune.pipelines.retrain.nodes.evaluate_on_test`; the reported
  variant is the best by validation (surgical: the best block).
* :func:`comparison_table` / :func:`comparison_figure`: the paper-style table
  (BioTune's row from ``test_metrics``, ``test_metrics_per_seed`` and
  ``best_genome``) and accuracy vs trainable-parameter share.

A method that is not in ``compare.methods`` is skipped: its nodes return a
``{"skipped": true}`` record at once and it is left out of the table.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import pandas as pd

from ...backbones import count_parameters, model_from_checkpoint
from ...lineage import check_same_lineage, now
from ...methods import PlanMethod, SearchMethod, check_compare_params, get_method, trainable_parameters
from ...params import require
from ...search.records import GenomeRecord
from ...search.runner import run_baseline
from ...search.store import StudyStore
from ...training import DeviceData, Trainer
from ..retrain.nodes import evaluate_on_test, retrain_best_genome, retrain_config, retrain_seeds

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- helpers


def chosen(method: str, compare_params: dict) -> bool:
    """Whether ``method`` is to be run (``compare.methods``); validates the compare parameters."""
    check_compare_params(compare_params)
    return method in compare_params["methods"]


def _skipped(method: str) -> dict:
    log.info("compare: %s is not in compare.methods, skipped", method)
    return {"method": method, "skipped": True}


def _seeds(compare_params: dict) -> list[int]:
    return retrain_seeds(compare_params, "compare")


# --------------------------------------------------------------------------- plan methods


def train_plan_method(
    backbone: dict,
    target_train: dict,
    target_val: dict,
    compare_params: dict,
    method_params: dict | None,
    training_params: dict,
    retrain_params: dict,
    *,
    method: str,
) -> dict:
    """Train every variant of a plan method once per seed on the whole training pool."""
    if not chosen(method, compare_params):
        return _skipped(method)
    m = get_method(method)
    if not isinstance(m, PlanMethod):
        raise ValueError(f"{method} is a search method; it has no fixed plan")
    t0 = time.perf_counter()
    cfg = retrain_config(training_params, retrain_params)
    check_same_lineage(f"compare.{method}", "dataset",
                       {"backbone": backbone, "target_train": target_train, "target_val": target_val},
                       "kedro run --from-nodes split_dataset (or the whole kedro run), then the compare pipeline")
    trainer = Trainer(model_from_checkpoint(backbone), cfg, mean=backbone["mean"], std=backbone["std"])
    train = DeviceData.from_split(target_train, trainer.device)
    val = DeviceData.from_split(target_val, trainer.device)
    total = int(count_parameters(trainer.model))
    variants = []
    for label, params in m.variants(trainer.model, **(method_params or {})):
        plan = m.plan(trainer.model, cfg.base_lr, **params)
        n_trainable = trainable_parameters(trainer.model, plan)
        runs = []
        for seed in _seeds(compare_params):
            res = trainer.train(plan, train, val, seed=seed, keep_best_state=True, data_key=("compare",))
            log.info("%s seed %d: best val macro acc %.4f at epoch %d (%d epochs, %.1fs)",
                     label, seed, res.best_val_acc, res.best_epoch, res.epochs_run, res.seconds)
            runs.append({"seed": seed, "state_dict": m.export_state(res.best_state), "best_val_acc": res.best_val_acc,
                         "best_epoch": res.best_epoch, "epochs_run": res.epochs_run, "history": res.history,
                         "seconds": res.seconds, "diverged": res.diverged})
        variants.append({
            "method": method, "variant": label, "params": params, "block_lrs": list(plan.block_lrs),
            "trainable_params": int(n_trainable), "total_params": total, "device": str(trainer.device),
            "runs": runs, "dataset": backbone["dataset"], "backbone_id": backbone["backbone_id"], "created": now(),
        })
    return {"method": method, "kind": "plan", "variants": variants, "search": None,
            "wall_seconds": time.perf_counter() - t0}


# --------------------------------------------------------------------------- search baselines


def search_baseline(
    backbone: dict,
    target_train: dict,
    target_val: dict,
    search_study_store: StudyStore,
    compare_params: dict,
    method_params: dict | None,
    search_params: dict,
    training_params: dict,
    *,
    method: str,
) -> tuple[pd.DataFrame, GenomeRecord]:
    """Run a search baseline with BioTune's settings and evaluation budget; returns (trials, best genome)
    (:func:`evotune.search.runner.run_baseline`)."""
    if not chosen(method, compare_params):
        _skipped(method)
        return pd.DataFrame({"skipped": [True]}), GenomeRecord.skipped_method(method)
    m = get_method(method)
    if not isinstance(m, SearchMethod):
        raise ValueError(f"{method} is not a search method")
    return run_baseline(m, m.resolve_params(method_params or {}), backbone, target_train, target_val,
                        search_study_store, search_params, training_params)


def retrain_searched_genome(
    backbone: dict,
    target_train: dict,
    target_val: dict,
    best_genome: GenomeRecord,
    compare_params: dict,
    training_params: dict,
    retrain_params: dict,
    *,
    method: str,
) -> dict:
    """Retrain a search baseline's best genome exactly as BioTune's (``retrain_best_genome``)."""
    if not chosen(method, compare_params) or best_genome.skipped:
        return _skipped(method)
    t0 = time.perf_counter()
    retrained = retrain_best_genome(
        backbone, target_train, target_val, best_genome,
        {"seeds": _seeds(compare_params), "training": require(retrain_params, "training", "retrain")}, training_params,
    )
    retrained.update(method=method, variant=method, params=best_genome.params or {})
    return {
        "method": method, "kind": "search", "variants": [retrained],
        "search": {k: getattr(best_genome, k) for k in ("evaluations", "trainings", "search_seconds", "wall_seconds",
                                                        "mask", "genes", "fitness", "study_name")},
        "wall_seconds": time.perf_counter() - t0,
    }


# --------------------------------------------------------------------------- test


def evaluate_method(backbone: dict, trained: dict, target_test: dict, training_params: dict) -> tuple[dict, pd.DataFrame]:
    """Test every trained variant once; the reported one is the best by mean validation accuracy."""
    if trained.get("skipped"):
        return {"method": trained["method"], "skipped": True}, pd.DataFrame({"skipped": [True]})
    rows, summaries = [], []
    for variant in trained["variants"]:
        summary, per_seed = evaluate_on_test(backbone, variant, target_test, training_params)
        val = float(np.mean([r["best_val_acc"] for r in variant["runs"]]))
        summary.update(variant=variant["variant"], val_macro_acc_mean=val, block_lrs=variant.get("block_lrs"),
                       params=variant.get("params", {}))
        summaries.append(summary)
        rows.append(per_seed.assign(method=trained["method"], variant=variant["variant"]))
    best = max(summaries, key=lambda s: s["val_macro_acc_mean"])  # max keeps the first on ties
    runs = [r for v in trained["variants"] for r in v["runs"]]
    search = trained.get("search") or {}
    train_seconds = float(sum(r["seconds"] for r in runs))
    metrics = {
        **best,
        "method": trained["method"],
        "kind": trained["kind"],
        "selected_by": "validation macro accuracy" if len(summaries) > 1 else None,
        "variants": [{k: s[k] for k in ("variant", "val_macro_acc_mean", "accuracy_mean", "accuracy_std",
                                        "macro_accuracy_mean", "macro_f1_mean", "trainable_params",
                                        "trainable_share")} for s in summaries],
        "evaluations": search.get("evaluations"),
        "trainings": int(len(runs) + int(search.get("trainings") or 0)),
        "train_seconds": train_seconds,
        "search_seconds": float(search.get("search_seconds") or 0.0),
        "wall_seconds": float(trained.get("wall_seconds", 0.0)) + float(search.get("wall_seconds") or 0.0),
    }
    metrics["compute_seconds"] = metrics["train_seconds"] + metrics["search_seconds"]
    if search:
        metrics["search"] = search
    return metrics, pd.concat(rows, ignore_index=True)


# --------------------------------------------------------------------------- table and figure

TABLE_COLUMNS = [
    "method", "variant", "kind", "test_accuracy", "accuracy_mean", "accuracy_std", "macro_accuracy_mean",
    "macro_accuracy_std", "macro_f1_mean", "macro_f1_std", "trainable_params", "total_params", "trainable_pct",
    "trainings", "evaluations", "compute_seconds", "wall_seconds", "n_seeds", "selected_by",
]


def _row(m: dict, *, method: str, variant: str | None = None, kind: str = "method") -> dict:
    return {
        "method": method,
        "variant": variant if variant is not None else m.get("variant", method),
        "kind": kind,
        "test_accuracy": f"{100 * m['accuracy_mean']:.2f} ± {100 * m['accuracy_std']:.2f}",
        **{k: m.get(k) for k in TABLE_COLUMNS if k in m and k not in ("method", "variant", "kind")},
        "trainable_pct": 100.0 * m["trainable_params"] / m["total_params"],
    }


def biotune_row(test_metrics: dict, test_metrics_per_seed: pd.DataFrame, best_genome: GenomeRecord) -> dict:
    """BioTune's row from the default pipeline's outputs."""
    retrain_s = float(test_metrics_per_seed["train_seconds"].sum()) if "train_seconds" in test_metrics_per_seed else 0.0
    m = {
        **test_metrics,
        "evaluations": best_genome.evaluations,
        "trainings": int(best_genome.trainings) + int(test_metrics.get("n_seeds", 0)),
        "compute_seconds": float(best_genome.search_seconds) + retrain_s,
        "wall_seconds": None,
        "selected_by": None,
    }
    return _row(m, method="biotune", variant=f"biotune[{best_genome.mask}]")


def comparison_table(compare_params: dict, test_metrics: dict, test_metrics_per_seed: pd.DataFrame,
                     best_genome: GenomeRecord, *method_metrics: dict) -> pd.DataFrame:
    """One row per method (BioTune first), then one ``variant`` row per surgical block.

    ``test_accuracy`` is mean ± std over seeds of the test accuracy, in %;
    ``trainable_pct`` the trained share of the model's parameters (LoRA: its
    adapters and the head over the original model); ``trainings`` the number of
    training runs the method needed (search included); ``compute_seconds`` the
    sum of their durations (search included, BioTune too); ``wall_seconds``
    the wall time of the method's nodes in this run (not known for BioTune).
    """
    check_compare_params(compare_params)
    rows = [biotune_row(test_metrics, test_metrics_per_seed, best_genome)]
    extra = []
    for m in method_metrics:
        if m.get("skipped"):
            continue
        rows.append(_row(m, method=m["method"]))
        if len(m.get("variants", [])) > 1:
            for v in m["variants"]:
                extra.append({
                    "method": m["method"], "variant": v["variant"], "kind": "variant",
                    "test_accuracy": f"{100 * v['accuracy_mean']:.2f} ± {100 * v['accuracy_std']:.2f}",
                    "accuracy_mean": v["accuracy_mean"], "accuracy_std": v["accuracy_std"],
                    "macro_accuracy_mean": v["macro_accuracy_mean"], "macro_f1_mean": v["macro_f1_mean"],
                    "trainable_params": v["trainable_params"], "total_params": m.get("total_params"),
                    "trainable_pct": 100.0 * v["trainable_share"],
                    "n_seeds": m.get("n_seeds"), "selected_by": f"val {v['val_macro_acc_mean']:.4f}",
                })
    if rows[0]["accuracy_mean"] is None:
        raise ValueError("BioTune's test_metrics has no accuracy_mean: rerun the default pipeline's test node")
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
