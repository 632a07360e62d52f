"""Backbone checkpoints: :class:`BackboneCheckpoint`, the typed artifact of the catalog's
``backbone`` and ``source_model`` entries, and checkpoint files.

A checkpoint stores a backbone (e.g. one trained on a user's source task) with what is
needed to use it: architecture, class count, block names, input size, normalisation and
where its weights came from. Its ``state_dict`` uses the
:class:`~evotune.backbones.staged.StagedModel` parameter names (``stages.<block>.<...>``).
On disk it is the plain dict :meth:`BackboneCheckpoint.to_dict` gives (plain python
values and CPU tensors), which ``torch.load(weights_only=True)`` reads: the catalog's
``evotune.io.TypedTorchDataset`` and a checkpoint file named by ``backbone.weights``
(read by :func:`load_checkpoint`) hold the same thing.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..artifacts import Artifact
from .registry import (
    PARAMS_FILE,
    BackboneWeightsError,
    UnknownArchitectureError,
    _empty_torchvision,
    get_arch,
    staged_from_torchvision,
)
from .staged import StagedModel, _arch_config, replace_head
from .timm_models import build_timm, is_timm

__all__ = ["CHECKPOINT_FORMAT", "BackboneCheckpoint", "load_checkpoint", "make_checkpoint", "model_from_checkpoint"]

#: Value of the ``format`` field of every checkpoint written by :func:`make_checkpoint`.
CHECKPOINT_FORMAT = "evotune-backbone-v1"


@dataclass
class BackboneCheckpoint(Artifact):
    """A backbone and what is needed to use it (see the module docstring).

    ``extra`` holds plain values only (e.g. the source model's accuracies); ``arch_config``
    the constructor options beyond arch and class count (Inception's ``transform_input``).
    The lineage fields (:mod:`evotune.lineage`) are set on the ``backbone`` the backbone
    stage writes; a source model or a checkpoint file may not have them.
    """

    format: str
    arch: str
    num_classes: int
    block_names: list[str]
    input_size: int
    resize_size: int
    mean: list[float]
    std: list[float]
    source: str
    state_dict: dict[str, Tensor]
    extra: dict[str, Any]
    arch_config: dict[str, Any] = field(default_factory=dict)
    dataset: str | None = None
    backbone_id: str | None = None
    created: str | None = None

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "") -> BackboneCheckpoint:
        """The checkpoint from plain data; a file that is not an evotune backbone checkpoint
        (a bare state dict, another format) is a :class:`BackboneWeightsError` saying so."""
        if isinstance(data, cls):
            return data
        _validate_checkpoint(data, f"Backbone checkpoint {source}" if source else "The backbone checkpoint")
        return super().from_dict(data, source=source)


_REQUIRED_KEYS = (
    "format",
    "arch",
    "num_classes",
    "block_names",
    "input_size",
    "resize_size",
    "mean",
    "std",
    "source",
    "state_dict",
    "extra",
)
_PLAIN = (str, int, float, bool, type(None))


def _check_plain(value: Any, where: str) -> None:
    """Raise TypeError unless ``value`` is made of types ``weights_only`` loading accepts."""
    if isinstance(value, _PLAIN) or isinstance(value, Tensor):
        return
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_plain(v, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, _PLAIN):
                raise TypeError(f"{where}: key {k!r} is not a plain python value")
            _check_plain(v, f"{where}[{k!r}]")
        return
    raise TypeError(
        f"{where}: {type(value).__name__} is not a plain python type or tensor "
        "(checkpoints must load with torch.load(weights_only=True))"
    )




def make_checkpoint(
    model: StagedModel,
    *,
    num_classes: int,
    input_size: int,
    resize_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    source: str,
    extra: dict | None = None,
) -> BackboneCheckpoint:
    """Describe ``model`` as a :class:`BackboneCheckpoint` (CPU copies of its weights).

    ``source`` is free text, e.g. ``"imagenet"`` or ``"source:cifar100"``; ``extra`` must
    hold plain values only (checkpoints load with ``torch.load(weights_only=True)``).
    """
    if not isinstance(model, StagedModel):
        raise TypeError(f"make_checkpoint needs a StagedModel, got {type(model).__name__}")
    if int(num_classes) != model.num_classes:
        raise ValueError(f"num_classes={num_classes} but the model's head has {model.num_classes} outputs")
    extra = dict(extra or {})
    _check_plain(extra, "extra")
    return BackboneCheckpoint(
        format=CHECKPOINT_FORMAT,
        arch=model.arch,
        num_classes=int(num_classes),
        block_names=list(model.block_names),
        input_size=int(input_size),
        resize_size=int(resize_size),
        mean=[float(v) for v in mean],
        std=[float(v) for v in std],
        source=str(source),
        state_dict={k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()},
        extra=extra,
        arch_config=_arch_config(model),
    )


def _validate_checkpoint(ckpt: Any, where: str) -> None:
    if not isinstance(ckpt, Mapping):
        raise BackboneWeightsError(
            f"{where} is not an evotune backbone checkpoint (it holds a {type(ckpt).__name__}, "
            "expected a dict written from evotune.backbones.make_checkpoint)."
        )
    if ckpt.get("format") != CHECKPOINT_FORMAT:
        if ckpt and all(isinstance(v, Tensor) for v in ckpt.values()):
            hint = (
                "It looks like a bare state_dict: load it into the model built by "
                "evotune.backbones.build_model and save it with make_checkpoint."
            )
        else:
            hint = "Write checkpoints with evotune.backbones.make_checkpoint."
        raise BackboneWeightsError(
            f"{where} is not an evotune backbone checkpoint (format={ckpt.get('format')!r}, "
            f"expected {CHECKPOINT_FORMAT!r}). {hint}"
        )
    missing = [k for k in _REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise BackboneWeightsError(f"{where} is missing checkpoint keys {missing}; it is incomplete.")
    if not isinstance(ckpt["state_dict"], Mapping):
        raise BackboneWeightsError(f"{where}: 'state_dict' is not a dict of tensors.")


def load_checkpoint(path: str | os.PathLike) -> BackboneCheckpoint:
    """Read a checkpoint file written by this project (on CPU, weights only): a saved
    ``backbone`` or ``source_model``, or ``torch.save(ckpt.to_dict(), path)``.

    Raises:
        BackboneWeightsError: the file is missing, unreadable, or not such a checkpoint.
    """
    path = Path(os.path.expanduser(os.fspath(path)))
    fix = (
        f"Set `backbone.weights` in {PARAMS_FILE} to an existing evotune backbone "
        "checkpoint (written by make_checkpoint, e.g. by source pre-training), to "
        "'imagenet', or to none for random initialisation."
    )
    if not path.is_file():
        raise BackboneWeightsError(f"Backbone checkpoint not found: {path}. {fix}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise BackboneWeightsError(
            f"Backbone checkpoint {path} could not be read ({type(exc).__name__}: {exc}). "
            f"It is corrupt, truncated or not a weights-only torch file. {fix}"
        ) from exc
    return BackboneCheckpoint.from_dict(ckpt, source=str(path))


def model_from_checkpoint(ckpt: BackboneCheckpoint, num_classes: int | None = None) -> StagedModel:
    """Rebuild the :class:`StagedModel` stored in ``ckpt`` (CPU, training mode).

    If ``num_classes`` is given and differs from ``ckpt.num_classes``, the head is
    replaced by a fresh Linear; every other block keeps the checkpoint's weights.

    Raises:
        BackboneWeightsError: unknown arch, block layout or state_dict not matching.
    """
    if not isinstance(ckpt, BackboneCheckpoint):
        raise TypeError(f"model_from_checkpoint needs a BackboneCheckpoint, got {type(ckpt).__name__} "
                        "(BackboneCheckpoint.from_dict reads plain data)")
    try:
        spec = get_arch(str(ckpt.arch))
    except UnknownArchitectureError as exc:
        raise BackboneWeightsError(f"checkpoint architecture {ckpt.arch!r} is unknown: {exc}") from exc
    if is_timm(spec.name):
        return _timm_from_checkpoint(ckpt, num_classes)
    if list(ckpt.block_names) != list(spec.block_names):
        raise BackboneWeightsError(
            f"checkpoint block layout {list(ckpt.block_names)} does not match {spec.name}'s "
            f"{list(spec.block_names)}; it was written by an incompatible evotune version."
        )
    tv_model = _empty_torchvision(spec.name, int(ckpt.num_classes), ckpt.arch_config)
    model = staged_from_torchvision(spec.name, tv_model)
    try:
        model.load_state_dict(ckpt.state_dict, strict=True)
    except RuntimeError as exc:
        raise BackboneWeightsError(
            f"checkpoint state_dict does not match architecture {spec.name!r} with "
            f"{ckpt.num_classes} classes: {exc}"
        ) from exc
    model.train()
    if num_classes is not None and int(num_classes) != int(ckpt.num_classes):
        replace_head(model, int(num_classes))
    return model


def _timm_from_checkpoint(ckpt: BackboneCheckpoint, num_classes: int | None) -> StagedModel:
    model = build_timm(str(ckpt.arch), int(ckpt.num_classes), timm_kwargs=ckpt.arch_config.get("timm_kwargs"),
                       check=False)
    if list(ckpt.block_names) != list(model.block_names):
        raise BackboneWeightsError(
            f"checkpoint block layout {list(ckpt.block_names)} does not match {ckpt.arch}'s "
            f"{list(model.block_names)}; it was written with another timm version or model options."
        )
    try:
        model.load_state_dict(ckpt.state_dict, strict=True)
    except RuntimeError as exc:
        raise BackboneWeightsError(f"checkpoint state_dict does not match {ckpt.arch}: {exc}") from exc
    model.train()
    if num_classes is not None and int(num_classes) != int(ckpt.num_classes):
        replace_head(model, int(num_classes))
    return model
