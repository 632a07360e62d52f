"""Nodes: retrain the best genome per seed, evaluate on the held-out test split."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from ...backbones import count_parameters, model_from_checkpoint
from ...errors import ParameterError
from ...lineage import check_same_lineage, now
from ...metrics import classification_metrics, mean_std
from ...params import check_type, require, where
from ...search.evaluator import genome_plan
from ...search.records import GenomeRecord
from ...training import DeviceData, TrainConfig, Trainer

log = logging.getLogger(__name__)

METRICS = ("accuracy", "macro_accuracy", "macro_f1", "cohen_kappa")


def retrain_seeds(params: dict, path: str = "retrain") -> list[int]:
    """``<path>.seeds``: a non-empty list of integers."""
    seeds = check_type(require(params, "seeds", path), list[int], f"{path}.seeds")
    if not seeds:
        raise ParameterError(f"{path}.seeds must list at least one seed, e.g. [684, 559, 629] ({where(path)}).")
    return seeds


def retrain_config(training_params: dict, retrain_params: dict) -> TrainConfig:
    """The final trainings' config: ``training`` updated with ``retrain.training``."""
    return TrainConfig.with_overrides(training_params, require(retrain_params, "training", "retrain"),
                                      "retrain.training")


def retrain_best_genome(
    backbone: dict, target_train: dict, target_val: dict, best_genome: GenomeRecord, retrain_params: dict,
    training_params: dict,
) -> dict:
    """Train the best genome on all training chunks, once per seed; keep the best epoch by validation."""
    cfg = retrain_config(training_params, retrain_params)
    rerun = "kedro run --from-nodes evolutionary_search (or the whole kedro run)"
    check_same_lineage("retrain", "dataset", {"backbone": backbone, "target_train": target_train,
                                              "target_val": target_val, "best_genome": best_genome}, rerun)
    check_same_lineage("retrain", "backbone_id", {"backbone": backbone, "best_genome": best_genome}, rerun)
    model = model_from_checkpoint(backbone)
    if list(model.block_names) != list(best_genome.block_names):
        raise ValueError(
            f"best_genome was found for blocks {best_genome.block_names} but the backbone has "
            f"{list(model.block_names)}: rerun the search after changing the backbone."
        )
    trainer = Trainer(model, cfg, mean=backbone["mean"], std=backbone["std"])
    train = DeviceData.from_split(target_train, trainer.device)
    val = DeviceData.from_split(target_val, trainer.device)
    plan = genome_plan(best_genome.genes, cfg.base_lr, force_head=best_genome.force_head_trainable,
                       name="best_genome")
    runs = []
    for seed in retrain_seeds(retrain_params):
        res = trainer.train(plan, train, val, seed=seed, keep_best_state=True, data_key=("retrain",))
        log.info("retrain seed %d: best val macro acc %.4f at epoch %d (%d epochs, %.1fs)",
                 seed, res.best_val_acc, res.best_epoch, res.epochs_run, res.seconds)
        runs.append({"seed": seed, "state_dict": res.best_state, "best_val_acc": res.best_val_acc,
                     "best_epoch": res.best_epoch, "epochs_run": res.epochs_run, "history": res.history,
                     "seconds": res.seconds, "diverged": res.diverged})
    trainable = count_parameters(model, plan.trained_blocks)
    return {
        "method": "biotune",
        "genome": best_genome.to_dict(),
        "block_lrs": plan.block_lrs,
        "trainable_params": int(trainable),
        "total_params": int(count_parameters(model)),
        "device": str(trainer.device),
        "runs": runs,
        "dataset": backbone["dataset"],
        "backbone_id": backbone["backbone_id"],
        "created": now(),
    }


def evaluate_on_test(backbone: dict, retrained: dict, target_test: dict, training_params: dict) -> tuple[dict, pd.DataFrame]:
    """Test every retrained seed once: accuracy, macro accuracy, macro F1, kappa, confusion matrix."""
    cfg = TrainConfig.from_params(training_params)
    rerun = "kedro run --from-nodes retrain_best_genome (or the whole kedro run)"
    check_same_lineage("evaluate_on_test", "dataset",
                       {"backbone": backbone, "retrained_models": retrained, "target_test": target_test}, rerun)
    check_same_lineage("evaluate_on_test", "backbone_id", {"backbone": backbone, "retrained_models": retrained}, rerun)
    model = model_from_checkpoint(backbone)
    trainer = Trainer(model, cfg, mean=backbone["mean"], std=backbone["std"])
    test = DeviceData.from_split(target_test, trainer.device)
    rows, confs = [], []
    for run in retrained["runs"]:
        if run["state_dict"] is None:
            raise ValueError(f"Seed {run['seed']} of the retrain has no checkpoint (its training diverged).")
        trainer.model.load_state_dict(run["state_dict"])
        _, conf = trainer.evaluate(test)
        conf = conf.cpu().numpy()
        confs.append(conf)
        rows.append({"seed": run["seed"], **classification_metrics(conf), "best_val_acc": run["best_val_acc"],
                     "epochs_run": run["epochs_run"], "train_seconds": run["seconds"]})
    per_seed = pd.DataFrame(rows)
    summary = {
        "method": retrained["method"],
        "n_seeds": len(rows),
        "n_test_images": int(len(test)),
        **mean_std(rows, METRICS),
        "trainable_params": retrained["trainable_params"],
        "total_params": retrained["total_params"],
        "trainable_share": retrained["trainable_params"] / retrained["total_params"],
        "classes": list(target_test["classes"]),
        "confusion_matrix": np.sum(confs, axis=0).astype(int).tolist(),
        "device": retrained["device"],
        "dataset": target_test["dataset"],
        "dataset_name": target_test["dataset_name"],
        "backbone_id": backbone["backbone_id"],
        "inputs_created": {"backbone": backbone["created"], "retrained_models": retrained["created"]},
    }
    log.info("test accuracy %.4f +- %.4f, macro F1 %.4f (%d seeds)",
             summary["accuracy_mean"], summary["accuracy_std"], summary["macro_f1_mean"], len(rows))
    return summary, per_seed
