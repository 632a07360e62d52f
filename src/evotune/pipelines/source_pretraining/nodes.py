"""Nodes: render the source task, pretrain a torchvision architecture on it from scratch.

This is what stands in for ImageNet pretraining offline: the checkpoint it
writes is a real pretrained backbone for the embedded target task.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from ...backbones import BackboneCheckpoint, build_model, count_parameters, make_checkpoint
from ...data.embedded import render_printed_characters
from ...data.split import Split
from ...data.splitting import assign_splits
from ...params import check_type, from_params, require
from ...progress import format_seconds, track
from ...training import DeviceData, TrainConfig, Trainer, TrainingPlan

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SourceDataParams:
    """``source_pretraining.data``: the rendered printed-character source task."""

    n_per_class: int
    image_size: int
    seed: int
    val_fraction: float
    test_fraction: float
    classes: list[str] | None  # null: 0-9 and A-Z


def make_source_dataset(params: dict) -> tuple[Split, Split, Split]:
    """Render the printed-character source task and split it (stratified, seeded)."""
    import pandas as pd

    d = from_params(SourceDataParams, require(params, "data", "source_pretraining"), "source_pretraining.data")
    data = render_printed_characters(
        d.n_per_class, image_size=d.image_size, seed=d.seed,
        **({"classes": d.classes} if d.classes is not None else {}),
    )
    labels = data.labels.tolist()
    index = pd.DataFrame({
        "item": data.items, "label": labels,
        "class_name": [data.classes[i] for i in labels], "official_split": "",
    })
    index = assign_splits(index, seed=d.seed, val_fraction=d.val_fraction,
                          test_fraction=d.test_fraction, respect_official_splits=False)
    out = []
    for name in ("train", "val", "test"):
        mask = torch.tensor((index["split"] == name).to_numpy())
        out.append(data.subset(mask))
    log.info("source task: %d classes, %d/%d/%d train/val/test images of %dpx",
             len(data.classes), *(len(o.labels) for o in out), data.images.shape[-1])
    return tuple(out)


def channel_stats(images: torch.Tensor) -> tuple[list[float], list[float]]:
    x = images.float().div(255.0)
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3)).clamp_min(1e-3)
    return mean.tolist(), std.tolist()


def pretrain_source_model(source_train: Split, source_val: Split, source_test: Split, params: dict,
                          training_params: dict) -> tuple[BackboneCheckpoint, dict]:
    """Train ``params.arch`` from scratch on the source task (all blocks, base lr), with the
    ``training`` parameters updated by ``source_pretraining.training``."""
    cfg = TrainConfig.with_overrides(training_params, require(params, "training", "source_pretraining"),
                                     "source_pretraining.training")
    arch = check_type(require(params, "arch", "source_pretraining"), str, "source_pretraining.arch")
    seed = check_type(require(params, "seed", "source_pretraining"), int, "source_pretraining.seed")
    n_cls = len(source_train.classes)
    torch.manual_seed(seed)
    model = build_model(arch, n_cls, weights=None)
    mean, std = channel_stats(source_train.images)
    trainer = Trainer(model, cfg, mean=mean, std=std)
    train = DeviceData.from_split(source_train, trainer.device)
    val = DeviceData.from_split(source_val, trainer.device)
    test = DeviceData.from_split(source_test, trainer.device)
    plan = TrainingPlan(block_lrs=[cfg.base_lr] * model.num_blocks, name="source_pretraining")
    log.info("pretraining %s on the source task (%d images, %d classes) on %s",
             arch, len(train), n_cls, trainer.device)
    with track("source pretraining", cfg.epochs, unit="epochs") as stage:
        def on_epoch(r: dict) -> None:
            stage.advance(1, note=f"epoch {r['epoch']}: val {r['val_macro_acc']:.3f}")
            log.info("source epoch %d/%d: loss %.4f, val macro acc %.4f, ETA %s (at most: early stopping may end "
                     "it sooner)", r["epoch"], cfg.epochs, r["train_loss"], r["val_macro_acc"],
                     format_seconds(stage.eta()))

        res = trainer.train(plan, train, val, seed=seed, keep_best_state=True, progress=on_epoch)
    trainer.model.load_state_dict(res.best_state)
    test_acc, _ = trainer.evaluate(test)
    size = int(source_train.images.shape[-1])
    ckpt = make_checkpoint(
        trainer.model.cpu(), num_classes=n_cls, input_size=size, resize_size=size, mean=mean, std=std,
        source="embedded printed characters (source_pretraining pipeline)",
        extra={"source_val_macro_acc": res.best_val_acc, "source_test_macro_acc": test_acc},
    )
    metrics = {
        "arch": arch, "classes": n_cls, "train_images": len(train),
        "best_val_macro_acc": res.best_val_acc, "test_macro_acc": test_acc,
        "best_epoch": res.best_epoch, "epochs_run": res.epochs_run, "seconds": res.seconds,
        "parameters": count_parameters(trainer.model), "device": str(trainer.device), "history": res.history,
    }
    log.info("source model: val %.4f, test %.4f macro accuracy after %d epochs (%.0fs)",
             res.best_val_acc, test_acc, res.epochs_run, res.seconds)
    return ckpt, metrics
