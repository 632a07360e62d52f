"""Nodes: build the backbone the search fine-tunes, as a :class:`~evotune.backbones.BackboneCheckpoint`."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from ...backbones import (
    BackboneCheckpoint,
    build_model,
    get_arch,
    imagenet_variant,
    is_weights_url,
    load_checkpoint,
    make_checkpoint,
    model_from_checkpoint,
    replace_head,
)
from ...data.split import Split
from ...errors import ParameterError
from ...lineage import now, tensor_fingerprint
from ...params import from_params, require

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BackboneParams:
    """The ``backbone`` parameters (conf/base/parameters_backbone.yml)."""

    arch: str
    weights: str  # source | imagenet | IMAGENET1K_V1 | IMAGENET1K_V2 | DEFAULT | <URL> | none | <checkpoint path>
    head_seed: int
    torch_home: str | None
    num_classes: int | None

    @classmethod
    def from_params(cls, params: dict) -> BackboneParams:
        return from_params(cls, params, "backbone")


def _with_lineage(ckpt: BackboneCheckpoint, target_train: Split) -> BackboneCheckpoint:
    """The checkpoint with the data it was made for and an id of its weights (see evotune.lineage)."""
    return dataclasses.replace(ckpt, dataset=target_train.dataset,
                               backbone_id=tensor_fingerprint(ckpt.state_dict)[:12], created=now())


def target_num_classes(target_train: Split, bp: BackboneParams) -> int:
    """The head's size: the target's classes (the data stage checked that labels are 0..n-1)."""
    n = len(target_train.classes)
    wanted = bp.num_classes
    if wanted is not None and wanted != n:
        raise ParameterError(
            f"backbone.num_classes is {wanted} but the target data has {n} classes; "
            "remove backbone.num_classes (it is read from the data) or fix the data source."
        )
    return n


def _check_input_size(input_size: int, data_params: dict, what: str) -> None:
    crop = int(require(require(data_params, "image", "data"), "crop_size", "data.image"))
    if crop != input_size:
        log.warning(
            "%s expects %dpx inputs but data.image.crop_size is %d: the search will run at %dpx.",
            what, input_size, crop, crop,
        )


def _head_generator(bp: BackboneParams) -> torch.Generator:
    return torch.Generator().manual_seed(bp.head_seed)


def backbone_from_source(source_model: BackboneCheckpoint, target_train: Split, backbone_params: dict,
                         data_params: dict) -> BackboneCheckpoint:
    """The source-pretrained model with a fresh head for the target's classes."""
    bp = BackboneParams.from_params(backbone_params)
    weights = bp.weights
    if weights != "source":
        raise ParameterError(
            f"backbone.weights is '{weights}', but the default pipeline fine-tunes the model of the "
            "source_pretraining pipeline. For ImageNet weights or a checkpoint file run "
            "`kedro run --pipelines pretrained` (or set backbone.weights: source)."
        )
    if bp.arch != source_model.arch:
        raise ParameterError(
            f"backbone.arch is '{bp.arch}' but the source model is a "
            f"'{source_model.arch}': set source_pretraining.arch and backbone.arch to the same name."
        )
    n = target_num_classes(target_train, bp)
    model = model_from_checkpoint(source_model)
    replace_head(model, n, generator=_head_generator(bp))
    _check_input_size(source_model.input_size, data_params, "The source model")
    log.info("backbone %s from the source model, head for %d classes", source_model.arch, n)
    return _with_lineage(make_checkpoint(
        model, num_classes=n, input_size=source_model.input_size, resize_size=source_model.resize_size,
        mean=source_model.mean, std=source_model.std, source=source_model.source,
    ), target_train)


def load_pretrained_backbone(target_train: Split, backbone_params: dict, data_params: dict) -> BackboneCheckpoint:
    """``backbone.weights``: ``imagenet`` or a torchvision enum member name (``IMAGENET1K_V1``, ...;
    torchvision, from the torch hub cache, downloaded there on first use), the URL of a torchvision-format
    file, ``none`` (random init), or the path of a checkpoint file written by this project."""
    bp = BackboneParams.from_params(backbone_params)
    arch_name = bp.arch
    spec = get_arch(arch_name)
    weights = bp.weights
    n = target_num_classes(target_train, bp)
    if weights == "none" or imagenet_variant(weights) is not None or is_weights_url(weights):
        model = build_model(
            arch_name, n, weights=None if weights == "none" else weights,
            torch_home=bp.torch_home,
        )
        replace_head(model, n, generator=_head_generator(bp))
        meta = {"input_size": spec.input_size, "resize_size": spec.resize_size, "mean": list(spec.mean),
                "std": list(spec.std), "source": f"torchvision {arch_name} ({weights})"}
    else:
        ckpt = load_checkpoint(Path(weights))
        if ckpt.arch != arch_name:
            raise ParameterError(f"backbone.arch is '{arch_name}' but the checkpoint {weights} holds a '{ckpt.arch}'.")
        model = model_from_checkpoint(ckpt)
        replace_head(model, n, generator=_head_generator(bp))
        meta = {k: getattr(ckpt, k) for k in ("input_size", "resize_size", "mean", "std")}
        meta["source"] = f"checkpoint {weights}"
    _check_input_size(meta["input_size"], data_params, f"{arch_name} ({weights})")
    log.info("backbone %s (%s), head for %d classes", arch_name, meta["source"], n)
    return _with_lineage(make_checkpoint(model, num_classes=n, **meta), target_train)
