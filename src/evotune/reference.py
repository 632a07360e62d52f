"""The naive reference loop: one genome evaluation written the paper's way.

This module exists to measure (``scripts/benchmark_evaluation.py``) and to check
(``tests/test_reference_loop.py``) the fast path of :mod:`evotune.training`. It
computes **the same thing** as :meth:`evotune.training.Trainer.train` and
:meth:`~evotune.training.Trainer.predict`, the usual, slow way:

* a torch :class:`~torch.utils.data.Dataset` over images held as PNG/JPEG bytes,
  files or PIL images, that **decodes, resizes, centre-crops and normalises every
  item in ``__getitem__``, every epoch** (torchvision transforms);
* a :class:`~torch.utils.data.DataLoader` (``num_workers=0``, batch size from the
  :class:`~evotune.training.TrainConfig`), batches moved to the device one by one;
* a **full forward pass every step** (no frozen-prefix cache), float32, no
  channels-last, no autocast;
* the model **rebuilt from the checkpoint file on disk for every evaluation**
  (:func:`~evotune.backbones.load_checkpoint` + :func:`~evotune.backbones.model_from_checkpoint`).

What is shared with the fast path, so that both compute the same function (the
project's own functions are called, not copied):

* freezing and the batch-norm policy: :func:`~evotune.training.apply_freezing`,
  :func:`~evotune.training.set_block_modes` with the config's ``frozen_bn`` (frozen blocks
  in eval mode under ``eval``, in train mode under ``train``);
* the optimizer: Adam over :func:`~evotune.training.default_param_groups` (or the
  plan's ``param_groups``), ``CosineAnnealingLR(T_max)`` stepped once per epoch (here
  torch's default Adam implementation, the paper's way; the fast path uses the fused
  kernel, which applies the same update);
* early stopping on validation macro accuracy (:class:`~evotune.training.EarlyStopping`,
  :func:`~evotune.training.confusion_matrix`, :func:`~evotune.training.macro_accuracy`)
  with the config's ``epochs`` and ``patience``;
* seeds: the head is redrawn by :func:`evotune.backbones.redraw_head` (as ``Trainer.reset`` does),
  and the training order of each epoch is ``torch.randperm(n, generator)`` of
  a CPU generator seeded with the seed, drawn once per epoch, exactly as the fast path
  draws it (:class:`EpochPermutationSampler`). ``DataLoader(shuffle=True)`` would not
  give that order: torch's ``RandomSampler`` draws a second permutation per epoch and
  the loader draws its base seed from the loader's generator.
* torch's global generators (dropout, stochastic depth, a plan's ``prepare``): seeded from
  the seed by :func:`evotune.training.seed_global_rng` right before the head is redrawn,
  inside :func:`evotune.training.fork_global_rng`, exactly where ``Trainer.train`` seeds
  them, so the two paths draw the same dropout masks.

On CPU the two paths then differ only by floating-point rounding: the fused Adam kernel,
and the frozen prefix computed in other batch groupings (the cache is filled in
``eval_batch_size`` batches of the unshuffled data; under ``frozen_bn: train`` the fast
path caches only a prefix without batch norm or dropout, see
:meth:`~evotune.training.TrainingPlan.frozen_prefix`); on CUDA also by the fast path's
bf16 autocast and channels-last layout.
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from .backbones import StagedModel, load_checkpoint, model_from_checkpoint, redraw_head
from .training import (
    EarlyStopping,
    TrainConfig,
    TrainingPlan,
    TrainResult,
    apply_freezing,
    confusion_matrix,
    default_param_groups,
    fork_global_rng,
    macro_accuracy,
    plan_loss,
    resolve_device,
    seed_global_rng,
    set_block_modes,
)

__all__ = [
    "EpochPermutationSampler",
    "ImageItem",
    "NaiveImageDataset",
    "NaiveResult",
    "decode_image",
    "decode_once",
    "encode_png",
    "eval_transform",
    "naive_predict",
    "naive_train",
    "rebuild_model",
]

#: One image as the naive loop accepts it: encoded bytes (PNG, JPEG, ...), a file path,
#: or a PIL image.
ImageItem = Union[bytes, bytearray, str, os.PathLike, "PIL.Image.Image"]  # noqa: F821


# --------------------------------------------------------------------------- images


def decode_image(item: ImageItem):
    """An RGB PIL image from encoded bytes, a file path or a PIL image."""
    from PIL import Image

    if isinstance(item, (bytes, bytearray, memoryview)):
        img = Image.open(io.BytesIO(item))
    elif isinstance(item, (str, os.PathLike)):
        img = Image.open(Path(item))
    elif isinstance(item, Image.Image):
        img = item
    else:
        raise TypeError(f"An image must be bytes, a path or a PIL image, got {type(item).__name__}")
    return img.convert("RGB")


def _interpolation(name: str):
    from torchvision.transforms import InterpolationMode

    return {"bilinear": InterpolationMode.BILINEAR, "bicubic": InterpolationMode.BICUBIC,
            "nearest": InterpolationMode.NEAREST}[name]


def eval_transform(resize_size: int, crop_size: int, mean: Sequence[float] | None, std: Sequence[float] | None,
                   interpolation: str = "bilinear"):
    """Resize (shorter side), centre crop, to tensor, normalise: the classic torchvision recipe.

    With ``mean=None`` the result is the uint8 ``[3, S, S]`` tensor instead (what the
    fast path stores once, see :func:`decode_once`).
    """
    from torchvision import transforms as T

    steps = [T.Resize(int(resize_size), interpolation=_interpolation(interpolation)), T.CenterCrop(int(crop_size))]
    if mean is None:
        steps.append(T.PILToTensor())
    else:
        steps += [T.ToTensor(), T.Normalize(list(mean), list(std))]
    return T.Compose(steps)


def decode_once(images: Sequence[ImageItem], *, resize_size: int, crop_size: int,
                interpolation: str = "bilinear") -> Tensor:
    """Decode, resize and crop every image once: uint8 ``[N, 3, crop, crop]``.

    The same resize/crop as the naive dataset applies every epoch, so a fast path fed
    with this tensor sees exactly the pixels the naive loop sees.
    """
    tf = eval_transform(resize_size, crop_size, None, None, interpolation)
    if len(images) == 0:
        return torch.empty(0, 3, crop_size, crop_size, dtype=torch.uint8)
    return torch.stack([tf(decode_image(im)) for im in images])


def encode_png(images: Tensor) -> list[bytes]:
    """uint8 ``[N, 3, H, W]`` (or ``[N, H, W]``) -> one PNG file's bytes per image (lossless)."""
    from PIL import Image

    out = []
    arr = images.detach().cpu()
    for x in arr:
        a = x.permute(1, 2, 0).numpy() if x.dim() == 3 else x.numpy()
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


class NaiveImageDataset(Dataset):
    """Images decoded, resized, cropped and normalised in ``__getitem__``: every epoch."""

    def __init__(self, images: Sequence[ImageItem], labels: Sequence[int] | Tensor | None, *, resize_size: int,
                 crop_size: int, mean: Sequence[float], std: Sequence[float], interpolation: str = "bilinear") -> None:
        self.images = list(images)
        if labels is None:
            labels = [0] * len(self.images)
        self.labels = [int(y) for y in (labels.tolist() if isinstance(labels, Tensor) else labels)]
        if len(self.labels) != len(self.images):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")
        self.transform = eval_transform(resize_size, crop_size, mean, std, interpolation)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        return self.transform(decode_image(self.images[i])), self.labels[i]


class EpochPermutationSampler(Sampler[int]):
    """One ``torch.randperm(n, generator=generator)`` per epoch: the fast path's order.

    The generator lives across epochs (epoch k uses the k-th permutation of the seed),
    exactly like ``Trainer.train``'s ``batches()``.
    """

    def __init__(self, n: int, generator: torch.Generator) -> None:
        self.n = int(n)
        self.generator = generator

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        yield from torch.randperm(self.n, generator=self.generator).tolist()


def _loader(dataset: Dataset, batch_size: int, sampler: Sampler | None) -> DataLoader:
    # A dedicated generator for the loader's own base-seed draw, so that building
    # a loader neither depends on nor advances the global RNG (dropout uses it).
    return DataLoader(dataset, batch_size=int(batch_size), sampler=sampler, shuffle=False, num_workers=0,
                      generator=torch.Generator())


@dataclass
class NaiveResult(TrainResult):
    """:class:`~evotune.training.TrainResult` plus what the naive path spends outside training."""

    setup_seconds: float = 0.0  # reading the checkpoint file, building the model and loaders
    train_images: int = 0  # images decoded and transformed for training (every epoch)


# --------------------------------------------------------------------------- model


def rebuild_model(checkpoint: str | os.PathLike | StagedModel, num_classes: int | None = None) -> StagedModel:
    """The model of an evaluation: read from the checkpoint file (every call), or a model given as is."""
    if isinstance(checkpoint, StagedModel):
        return checkpoint
    return model_from_checkpoint(load_checkpoint(checkpoint), num_classes)


def _predict_loader(model: StagedModel, loader: DataLoader, device: torch.device) -> tuple[Tensor, Tensor]:
    model.eval()
    preds, logits_all = [], []
    for x, _y in loader:
        logits = model(x.to(device))
        logits_all.append(logits.float())
        preds.append(logits.argmax(1))
    if not preds:
        return torch.empty(0, dtype=torch.long, device=device), torch.empty(0, device=device)
    return torch.cat(preds), torch.cat(logits_all)


def naive_predict(
    checkpoint: str | os.PathLike | StagedModel,
    images: Sequence[ImageItem],
    cfg: TrainConfig,
    *,
    resize_size: int,
    crop_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    num_classes: int | None = None,
    interpolation: str = "bilinear",
    device: str | torch.device | None = None,
    return_logits: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Class predictions (eval mode, full forward, batches of ``cfg.eval_batch_size``).

    ``checkpoint`` is a checkpoint file (read now) or a model to use as it is.
    With ``return_logits`` also returns the float32 logits.
    """
    dev = device if isinstance(device, torch.device) else resolve_device(device or cfg.device)
    model = rebuild_model(checkpoint, num_classes).to(dev)
    ds = NaiveImageDataset(images, None, resize_size=resize_size, crop_size=crop_size, mean=mean, std=std,
                           interpolation=interpolation)
    preds, logits = _predict_loader(model, _loader(ds, cfg.eval_batch_size, None), dev)
    return (preds, logits) if return_logits else preds


def naive_train(
    checkpoint: str | os.PathLike | StagedModel,
    plan: TrainingPlan,
    train_images: Sequence[ImageItem],
    train_labels: Sequence[int] | Tensor,
    val_images: Sequence[ImageItem],
    val_labels: Sequence[int] | Tensor,
    cfg: TrainConfig,
    *,
    seed: int,
    resize_size: int,
    crop_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    num_classes: int | None = None,
    interpolation: str = "bilinear",
    device: str | torch.device | None = None,
    keep_best_state: bool = False,
) -> NaiveResult:
    """Train ``plan`` the naive way; same result as ``Trainer.train(plan, ..., seed=seed)``.

    ``checkpoint`` is normally the path of a checkpoint file (rebuilt from disk, as a
    naive search does per evaluation); a :class:`StagedModel` is used as it is (its
    weights are then changed in place). ``num_classes`` defaults to ``max(label) + 1``
    over train and validation labels; pass the target's class count to match a
    fast path whose ``DeviceData.num_classes`` is ``len(split.classes)``.
    """
    if cfg.augment != "none":
        raise ValueError(f"The naive reference loop has no augmentation (training.augment is {cfg.augment!r}); "
                         "compare it with augment: none.")
    t0 = time.perf_counter()
    dev = device if isinstance(device, torch.device) else resolve_device(device or cfg.device)
    ytr = train_labels.tolist() if isinstance(train_labels, Tensor) else [int(y) for y in train_labels]
    yva = val_labels.tolist() if isinstance(val_labels, Tensor) else [int(y) for y in val_labels]
    n_cls = int(num_classes) if num_classes is not None else max(ytr + yva) + 1

    with fork_global_rng(dev):  # torch's global generators are as they were when the training ends
        model = rebuild_model(checkpoint, n_cls)
        seed_global_rng(seed, dev)  # dropout & co. from the seed, at the same point as Trainer.train
        redraw_head(model, seed)
        model.to(dev)
        undo = None
        if plan.prepare is not None:
            undo = plan.prepare(model)
            model.to(dev)
        apply_freezing(model, plan)
        groups = (plan.param_groups or default_param_groups)(model, plan.block_lrs)
        if not groups:
            raise ValueError(f"The plan '{plan.name}' trains no parameter.")
        optimizer = torch.optim.Adam(groups, lr=cfg.base_lr, weight_decay=cfg.weight_decay)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.cosine_t_max)
        if plan.on_train_start is not None:
            plan.on_train_start(model, optimizer)

        kw = dict(resize_size=resize_size, crop_size=crop_size, mean=mean, std=std, interpolation=interpolation)
        train_ds = NaiveImageDataset(train_images, ytr, **kw)
        val_ds = NaiveImageDataset(val_images, yva, **kw)
        gen = torch.Generator(device="cpu").manual_seed(int(seed))
        train_loader = _loader(train_ds, cfg.batch_size, EpochPermutationSampler(len(train_ds), gen))
        val_loader = _loader(val_ds, cfg.eval_batch_size, None)
        val_y = torch.tensor(yva, dtype=torch.long, device=dev)
        setup_seconds = time.perf_counter() - t0

        def batches() -> Iterator[tuple[Tensor, Tensor, int]]:
            for x, y in train_loader:
                yield x.to(dev), y.to(dev), 0

        stopping = EarlyStopping(cfg.patience, keep_best_state)
        history: list[dict] = []
        diverged = False
        images_seen = 0
        for epoch in range(cfg.epochs):
            set_block_modes(model, plan, True, cfg.frozen_bn)
            if plan.on_epoch_start is not None:
                plan.on_epoch_start(model, optimizer, batches)
                set_block_modes(model, plan, True, cfg.frozen_bn)
            loss_sum, seen = 0.0, 0
            for x, y, _s in batches():
                loss = plan_loss(model, plan, model(x), y, cfg.aux_loss_weight)  # full forward, every step
                if not torch.isfinite(loss):
                    diverged = True
                    break
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                loss_sum += float(loss.detach()) * int(y.shape[0])
                seen += int(y.shape[0])
            images_seen += seen
            if diverged:
                break
            scheduler.step()
            pred, _ = _predict_loader(model, val_loader, dev)
            val_acc = macro_accuracy(confusion_matrix(pred, val_y, n_cls))
            history.append({"epoch": epoch + 1, "train_loss": loss_sum / max(seen, 1), "val_macro_acc": val_acc})
            if stopping.update(epoch + 1, val_acc, model):
                break
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        if undo is not None:
            undo()  # the model (maybe the caller's) holds its original modules again
        return NaiveResult(
            best_val_acc=stopping.best_val_acc(diverged),
            best_epoch=stopping.best_epoch,
            epochs_run=len(history),
            history=history,
            diverged=diverged,
            best_state=stopping.best_state,
            seconds=time.perf_counter() - t0,
            setup_seconds=setup_seconds,
            train_images=images_seen,
        )
