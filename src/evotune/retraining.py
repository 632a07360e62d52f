"""The final trainings: a method's models trained on the whole training pool, once per seed.

BioTune's best genome (``retrain`` pipeline) and every compared method (``compare``
pipeline) are trained the same way: the training config of the retrain (``training``
updated with ``retrain.training``), every seed of ``retrain.seeds`` / ``compare.seeds``
on all training chunks, early stopping on the validation split, each seed's best state
kept. The results are typed artifacts (:mod:`evotune.artifacts`):

* :class:`TrainedRun`: one seed's training (its best state, validation accuracy, history);
* :class:`TrainedVariant`: one training plan trained once per seed (BioTune's
  ``retrained_models``; one variant of a compared method);
* :class:`TrainedMethod`: a compared method's variants (surgical: one per block) and,
  for the search baselines, what their search cost (:class:`SearchSummary`).

Their test is :mod:`evotune.evaluation`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .artifacts import Artifact
from .backbones import count_parameters, model_from_checkpoint
from .errors import InputMismatchError, ParameterError
from .lineage import now
from .methods import PlanMethod, get_method, trainable_parameters
from .params import check_type, require, where
from .progress import StageProgress, track
from .search.evaluator import genome_plan
from .search.records import GenomeRecord
from .training import DeviceData, TrainConfig, Trainer, TrainingPlan

if TYPE_CHECKING:
    from .backbones.checkpoint import BackboneCheckpoint
    from .data.split import Split

log = logging.getLogger(__name__)


@dataclass
class TrainedRun(Artifact):
    """One seed's training; ``state_dict`` is the best epoch's (by validation), None if it diverged."""

    seed: int
    state_dict: dict[str, Any] | None
    best_val_acc: float
    best_epoch: int
    epochs_run: int
    history: list[dict]
    seconds: float
    diverged: bool


@dataclass
class TrainedVariant(Artifact):
    """One training plan trained once per seed: BioTune's retrained genome, a compared method's variant."""

    method: str
    variant: str
    params: dict[str, Any]
    genome: GenomeRecord | None  # the best genome retrained (BioTune, search baselines); None for a fixed plan
    block_lrs: list[float | None]
    trainable_params: int
    total_params: int
    device: str
    runs: list[TrainedRun]
    dataset: str
    backbone_id: str
    created: str


@dataclass
class SearchSummary(Artifact):
    """What a search baseline's search cost and found (from its best genome): its trainings and seconds include
    the confirmation's of a pick rule (``confirm_trainings``, ``confirm_seconds``)."""

    evaluations: int | None
    trainings: int | None
    search_seconds: float | None
    wall_seconds: float | None
    mask: str | None
    genes: list[float] | None
    fitness: float | None
    study_name: str | None


@dataclass
class BestGenomes(Artifact):
    """A search's best genome on each resampling of the split (the compare pipeline's ``best_genomes``),
    in the order of the resamplings (``resamplings[i]`` is the index of ``genomes[i]``'s)."""

    method: str
    resamplings: list[int]
    genomes: list[GenomeRecord]


@dataclass
class TrainedMethod(Artifact):
    """A compared method's trained variants (``kind``: ``plan`` or ``search``)."""

    method: str
    kind: str
    variants: list[TrainedVariant]
    search: SearchSummary | None
    wall_seconds: float
    dataset: str
    backbone_id: str
    created: str


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


def train_seeds(
    trainer: Trainer,
    plan: TrainingPlan,
    train: DeviceData,
    val: DeviceData,
    seeds: Sequence[int],
    *,
    label: str,
    data_key: tuple,
    export_state: Callable[[Any], Any] | None = None,
    stage: StageProgress | None = None,
) -> list[TrainedRun]:
    """``plan`` trained once per seed, each seed's best state kept (``export_state`` turns it into
    the state to store, e.g. LoRA's merged weights); each training shows on ``stage``."""
    runs = []
    for seed in seeds:
        name = f"{label} seed {seed}"
        if stage is not None:
            stage.start(name)
        res = trainer.train(plan, train, val, seed=seed, keep_best_state=True, data_key=data_key,
                            progress=(lambda r, name=name: stage.epoch(name, r, trainer.cfg.epochs)) if stage else None)
        if stage is not None:
            stage.advance(1, note=f"{name}: val {res.best_val_acc:.3f}")
        log.info("%s seed %d: best val macro acc %.4f at epoch %d (%d epochs, %.1fs)",
                 label, seed, res.best_val_acc, res.best_epoch, res.epochs_run, res.seconds)
        state = export_state(res.best_state) if export_state is not None else res.best_state
        runs.append(TrainedRun(seed=seed, state_dict=state, best_val_acc=res.best_val_acc, best_epoch=res.best_epoch,
                               epochs_run=res.epochs_run, history=res.history, seconds=res.seconds,
                               diverged=res.diverged))
    return runs


def retrain_genome(
    backbone: BackboneCheckpoint, target_train: Split, target_val: Split, genome: GenomeRecord, seeds: Sequence[int], cfg: TrainConfig,
    *, method: str = "biotune", params: dict | None = None,
) -> TrainedVariant:
    """A searched genome (BioTune's, or a search baseline's) trained on all training chunks, once per seed."""
    model = model_from_checkpoint(backbone)
    if list(model.block_names) != list(genome.block_names):
        raise InputMismatchError(
            f"best_genome was found for blocks {genome.block_names} but the backbone has "
            f"{list(model.block_names)}: rerun the search after changing the backbone."
        )
    trainer = Trainer(model, cfg, mean=backbone.mean, std=backbone.std)
    train = DeviceData.from_split(target_train, trainer.device)
    val = DeviceData.from_split(target_val, trainer.device)
    plan = genome_plan(genome.genes, cfg.base_lr, force_head=genome.force_head_trainable, name="best_genome")
    what = "retrain" if method == "biotune" else f"{method} retrain"
    with track(f"{what} {genome.mask}", len(seeds)) as stage:
        runs = train_seeds(trainer, plan, train, val, seeds, label=what, data_key=("retrain",), stage=stage)
    trainable = count_parameters(model, plan.trained_blocks)
    return TrainedVariant(
        method=method, variant=method, params=dict(params or {}), genome=genome, block_lrs=list(plan.block_lrs),
        trainable_params=int(trainable), total_params=int(count_parameters(model)), device=str(trainer.device),
        runs=runs, dataset=backbone.dataset, backbone_id=backbone.backbone_id, created=now(),
    )


def train_plan_method(
    backbone: BackboneCheckpoint, target_train: Split, target_val: Split, method: str, method_params: dict | None,
    seeds: Sequence[int], cfg: TrainConfig,
) -> TrainedMethod:
    """Every variant of a fixed-plan method (full fine-tuning, surgical, LoRA, ...) trained once per seed."""
    m = get_method(method)
    if not isinstance(m, PlanMethod):
        raise ValueError(f"{method} is a search method; it has no fixed plan")
    t0 = time.perf_counter()
    trainer = Trainer(model_from_checkpoint(backbone), cfg, mean=backbone.mean, std=backbone.std)
    train = DeviceData.from_split(target_train, trainer.device)
    val = DeviceData.from_split(target_val, trainer.device)
    total = int(count_parameters(trainer.model))
    variants = []
    todo = m.variants(trainer.model, **(method_params or {}))
    with track(f"compare {method}", len(todo) * len(seeds)) as stage:
        for label, params in todo:
            plan = m.plan(trainer.model, cfg.base_lr, **params)
            n_trainable = trainable_parameters(trainer.model, plan)
            runs = train_seeds(trainer, plan, train, val, seeds, label=label, data_key=("compare",),
                               export_state=m.export_state, stage=stage)
            variants.append(TrainedVariant(
                method=method, variant=label, params=params, genome=None, block_lrs=list(plan.block_lrs),
                trainable_params=int(n_trainable), total_params=total, device=str(trainer.device), runs=runs,
                dataset=backbone.dataset, backbone_id=backbone.backbone_id, created=now(),
            ))
    return TrainedMethod(method=method, kind="plan", variants=variants, search=None,
                         wall_seconds=time.perf_counter() - t0, dataset=backbone.dataset,
                         backbone_id=backbone.backbone_id, created=now())


def retrain_search_method(
    backbone: BackboneCheckpoint, target_train: Split, target_val: Split, best_genome: GenomeRecord, method: str, seeds: Sequence[int],
    cfg: TrainConfig,
) -> TrainedMethod:
    """A search baseline's best genome retrained exactly as BioTune's (:func:`retrain_genome`)."""
    t0 = time.perf_counter()
    variant = retrain_genome(backbone, target_train, target_val, best_genome, seeds, cfg, method=method,
                             params=best_genome.params or {})
    search = SearchSummary(**{k: getattr(best_genome, k) for k in (
        "evaluations", "wall_seconds", "mask", "genes", "fitness", "study_name")},
        # a pick rule's confirmation (evotune.search.confirm) is part of what the search cost
        trainings=int(best_genome.trainings) + int(best_genome.confirm_trainings or 0),
        search_seconds=float(best_genome.search_seconds) + float(best_genome.confirm_seconds or 0.0))
    return TrainedMethod(method=method, kind="search", variants=[variant], search=search,
                         wall_seconds=time.perf_counter() - t0, dataset=variant.dataset,
                         backbone_id=variant.backbone_id, created=now())
