"""The test: trained models evaluated once on the held-out test split.

:func:`evaluate_variant` tests every seed of a :class:`~evotune.retraining.TrainedVariant`
(BioTune's ``retrained_models``, one variant of a compared method) and gives its
:class:`TestMetrics` (mean and std over seeds, the summed confusion matrix) and a table
with one row per seed. :func:`evaluate_variants` does so for each variant of a compared
method and reports the best by mean validation accuracy as :class:`MethodMetrics`
(with what the method's trainings and search cost).

The search evaluates genomes on validation chunks (:mod:`evotune.search`); the test
split is used only here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import pandas as pd

from .artifacts import Artifact
from .backbones import model_from_checkpoint
from .lineage import now
from .metrics import classification_metrics, mean_std
from .retraining import SearchSummary, TrainedMethod, TrainedVariant
from .training import DeviceData, TrainConfig, Trainer

log = logging.getLogger(__name__)

METRICS = ("accuracy", "macro_accuracy", "macro_f1", "cohen_kappa")


@dataclass
class TestMetrics(Artifact):
    """A trained variant's test: mean and std over its seeds, the confusion matrix summed over them."""

    __test__ = False  # not a pytest test class

    method: str
    variant: str
    n_seeds: int
    n_test_images: int
    accuracy_mean: float
    accuracy_std: float
    macro_accuracy_mean: float
    macro_accuracy_std: float
    macro_f1_mean: float
    macro_f1_std: float
    cohen_kappa_mean: float
    cohen_kappa_std: float
    val_macro_acc_mean: float  # mean over seeds of the best validation macro accuracy (selects a variant)
    trainable_params: int
    total_params: int
    trainable_share: float
    block_lrs: list[float | None]
    params: dict[str, Any]
    classes: list[str]
    confusion_matrix: list[list[int]]
    device: str
    dataset: str
    dataset_name: str
    backbone_id: str
    inputs_created: dict[str, str]  # creation time of each input (backbone, the trained models)
    created: str


@dataclass
class VariantSummary(Artifact):
    """One variant's line in a method's metrics (surgical: one per block)."""

    variant: str
    val_macro_acc_mean: float
    accuracy_mean: float
    accuracy_std: float
    macro_accuracy_mean: float
    macro_f1_mean: float
    trainable_params: int
    trainable_share: float


@dataclass
class MethodMetrics(TestMetrics):
    """A compared method's test: the metrics of its variant chosen by validation, and its cost."""

    kind: str
    selected_by: str | None  # how the reported variant was chosen (None: the method has one)
    variants: list[VariantSummary]
    evaluations: int | None  # search evaluations (search baselines), None for a fixed plan
    trainings: int  # training runs: seeds x variants, plus the search's
    train_seconds: float
    search_seconds: float
    wall_seconds: float
    compute_seconds: float  # train_seconds + search_seconds
    search: SearchSummary | None


def evaluate_variant(
    backbone: dict, variant: TrainedVariant, target_test: dict, cfg: TrainConfig, *, trained_as: str = "retrained_models"
) -> tuple[TestMetrics, pd.DataFrame]:
    """Test every seed of ``variant`` once: accuracy, macro accuracy, macro F1, kappa, confusion matrix.
    ``trained_as`` names the trained models' input in ``inputs_created``."""
    model = model_from_checkpoint(backbone)
    trainer = Trainer(model, cfg, mean=backbone.mean, std=backbone.std)
    test = DeviceData.from_split(target_test, trainer.device)
    rows, confs = [], []
    for run in variant.runs:
        if run.state_dict is None:
            raise ValueError(f"Seed {run.seed} of {variant.variant} has no checkpoint (its training diverged).")
        trainer.model.load_state_dict(run.state_dict)
        _, conf = trainer.evaluate(test)
        conf = conf.cpu().numpy()
        confs.append(conf)
        rows.append({"seed": run.seed, **classification_metrics(conf), "best_val_acc": run.best_val_acc,
                     "epochs_run": run.epochs_run, "train_seconds": run.seconds})
    per_seed = pd.DataFrame(rows)
    metrics = TestMetrics(
        method=variant.method,
        variant=variant.variant,
        n_seeds=len(rows),
        n_test_images=int(len(test)),
        **mean_std(rows, METRICS),
        val_macro_acc_mean=float(np.mean([r.best_val_acc for r in variant.runs])),
        trainable_params=variant.trainable_params,
        total_params=variant.total_params,
        trainable_share=variant.trainable_params / variant.total_params,
        block_lrs=variant.block_lrs,
        params=variant.params,
        classes=list(target_test.classes),
        confusion_matrix=np.sum(confs, axis=0).astype(int).tolist(),
        device=variant.device,
        dataset=target_test.dataset,
        dataset_name=target_test.dataset_name,
        backbone_id=backbone.backbone_id,
        inputs_created={"backbone": backbone.created, trained_as: variant.created},
        created=now(),
    )
    log.info("%s test accuracy %.4f +- %.4f, macro F1 %.4f (%d seeds)", variant.variant,
             metrics.accuracy_mean, metrics.accuracy_std, metrics.macro_f1_mean, len(rows))
    return metrics, per_seed


def evaluate_variants(backbone: dict, trained: TrainedMethod, target_test: dict, cfg: TrainConfig
                ) -> tuple[MethodMetrics, pd.DataFrame]:
    """Test every variant once; the reported one is the best by mean validation accuracy (the first on ties)."""
    tables, tested = [], []
    for variant in trained.variants:
        metrics, per_seed = evaluate_variant(backbone, variant, target_test, cfg, trained_as="trained")
        tested.append(metrics)
        tables.append(per_seed.assign(method=trained.method, variant=variant.variant))
    best = max(tested, key=lambda s: s.val_macro_acc_mean)  # max keeps the first on ties
    runs = [r for v in trained.variants for r in v.runs]
    search = trained.search
    train_seconds = float(sum(r.seconds for r in runs))
    search_seconds = float((search.search_seconds if search else None) or 0.0)
    metrics = MethodMetrics(
        **{f.name: getattr(best, f.name) for f in fields(TestMetrics)},
        kind=trained.kind,
        selected_by="validation macro accuracy" if len(tested) > 1 else None,
        variants=[VariantSummary(**{f.name: getattr(s, f.name) for f in fields(VariantSummary)}) for s in tested],
        evaluations=search.evaluations if search else None,
        trainings=int(len(runs) + int((search.trainings if search else None) or 0)),
        train_seconds=train_seconds,
        search_seconds=search_seconds,
        wall_seconds=float(trained.wall_seconds) + float((search.wall_seconds if search else None) or 0.0),
        compute_seconds=train_seconds + search_seconds,
        search=search,
    )
    return metrics, pd.concat(tables, ignore_index=True)
