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
from collections import Counter
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .artifacts import Artifact
from .backbones import model_from_checkpoint
from .lineage import now
from .metrics import classification_metrics, mean_std
from .retraining import SearchSummary, TrainedMethod, TrainedVariant
from .training import DeviceData, TrainConfig, Trainer

if TYPE_CHECKING:
    from .backbones.checkpoint import BackboneCheckpoint
    from .data.split import Split

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
class ResamplingMetrics(Artifact):
    """A compared method's test on one resampling of the split (:mod:`evotune.data.resampling`):
    the variant chosen by validation on it, its per-seed test metrics and what the resampling cost."""

    resampling: int  # r; 0 = the run's own split
    dataset: str  # the resampled split's fingerprint
    variant: str
    seeds: list[int]
    accuracy: list[float]  # per seed, in the order of ``seeds``
    macro_accuracy: list[float]
    macro_f1: list[float]
    accuracy_mean: float
    macro_accuracy_mean: float
    macro_f1_mean: float
    trainable_params: int
    trainable_share: float
    evaluations: int | None
    trainings: int
    compute_seconds: float
    search: SearchSummary | None


@dataclass
class MethodMetrics(TestMetrics):
    """A compared method's test: the metrics of its variant chosen by validation, and its cost.

    Over several resamplings (:func:`combine_resamplings`): each ``*_mean`` is the mean over the
    resamplings of the mean over seeds, each ``*_std`` the mean over the resamplings of the std over
    seeds (ddof=0), the counts and seconds are summed, ``trainable_*`` averaged, ``variants`` averaged
    per variant, ``search`` is resampling 0's; ``resamplings`` holds each resampling's own numbers.
    """

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
    resamplings: list[ResamplingMetrics] = field(default_factory=list)


def evaluate_variant(
    backbone: BackboneCheckpoint, variant: TrainedVariant, target_test: Split, cfg: TrainConfig, *, trained_as: str = "retrained_models"
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


def evaluate_variants(backbone: BackboneCheckpoint, trained: TrainedMethod, target_test: Split, cfg: TrainConfig
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


def resampling_metrics(r: int, dataset: str, metrics: MethodMetrics, per_seed: pd.DataFrame) -> ResamplingMetrics:
    """One resampling's line: the reported variant's per-seed test metrics (from ``per_seed``)."""
    rows = per_seed[per_seed["variant"] == metrics.variant]
    return ResamplingMetrics(
        resampling=int(r), dataset=dataset, variant=metrics.variant, seeds=[int(s) for s in rows["seed"]],
        **{k: [float(v) for v in rows[k]] for k in ("accuracy", "macro_accuracy", "macro_f1")},
        accuracy_mean=metrics.accuracy_mean, macro_accuracy_mean=metrics.macro_accuracy_mean,
        macro_f1_mean=metrics.macro_f1_mean, trainable_params=metrics.trainable_params,
        trainable_share=metrics.trainable_share, evaluations=metrics.evaluations, trainings=metrics.trainings,
        compute_seconds=metrics.compute_seconds, search=metrics.search,
    )


def combine_resamplings(tested: list[tuple[int, str, MethodMetrics, pd.DataFrame]], dataset: str
                        ) -> tuple[MethodMetrics, pd.DataFrame]:
    """A method's metrics over its resamplings (``(r, resampled dataset, metrics, per-seed table)`` each,
    :func:`evaluate_variants` on resampling r) for the run's split ``dataset``; the per-seed tables
    concatenated with a ``resampling`` column. See :class:`MethodMetrics` for how each field combines."""
    if not tested:
        raise ValueError("combine_resamplings needs at least one resampling")
    per_r = [resampling_metrics(r, ds, m, t) for r, ds, m, t in tested]
    ms = [m for _, _, m, _ in tested]
    first = ms[0]

    def mean(xs) -> float:
        return float(np.mean([float(x) for x in xs]))

    def seed_std(key: str) -> float:
        return mean(np.std(getattr(p, key), ddof=0) if getattr(p, key) else 0.0 for p in per_r)

    def total(xs):
        xs = list(xs)
        return None if any(x is None for x in xs) else sum(xs)

    values = {f.name: getattr(first, f.name) for f in fields(MethodMetrics)}
    for k in METRICS:
        values[f"{k}_mean"] = mean(getattr(m, f"{k}_mean") for m in ms)
    for k in ("accuracy", "macro_accuracy", "macro_f1"):
        values[f"{k}_std"] = seed_std(k)
    values["cohen_kappa_std"] = mean(m.cohen_kappa_std for m in ms)
    counts = Counter(m.variant for m in ms)
    variant = max(counts, key=lambda v: counts[v])  # the most often chosen, the first on ties
    variants = []
    for v in first.variants:
        same = [s for m in ms for s in m.variants if s.variant == v.variant]
        variants.append(VariantSummary(
            variant=v.variant, **{k: mean(getattr(s, k) for s in same) for k in (
                "val_macro_acc_mean", "accuracy_mean", "accuracy_std", "macro_accuracy_mean", "macro_f1_mean")},
            trainable_params=int(round(mean(s.trainable_params for s in same))),
            trainable_share=mean(s.trainable_share for s in same)))
    values.update(
        variant=variant,
        val_macro_acc_mean=mean(m.val_macro_acc_mean for m in ms),
        trainable_params=int(round(mean(m.trainable_params for m in ms))),
        trainable_share=mean(m.trainable_share for m in ms),
        confusion_matrix=np.sum([m.confusion_matrix for m in ms], axis=0).astype(int).tolist(),
        dataset=dataset,
        variants=variants,
        evaluations=total(m.evaluations for m in ms),
        trainings=int(sum(m.trainings for m in ms)),
        **{k: float(sum(getattr(m, k) for m in ms)) for k in (
            "train_seconds", "search_seconds", "wall_seconds", "compute_seconds")},
        resamplings=per_r,
        created=now(),
    )
    table = pd.concat([t.assign(resampling=int(r)) for r, _, _, t in tested], ignore_index=True)
    return MethodMetrics(**values), table
