"""Where a backbone's weights come from: random initialisation, the torchvision ImageNet
weights in the local torch hub cache, or an evotune backbone checkpoint file.

ImageNet weights, offline
-------------------------
``build_model(arch, n, weights="imagenet")`` loads the torchvision ImageNet weights from
the local torch hub cache, ``<hub dir>/checkpoints/<file named in the weights URL>``,
where the hub dir is ``<torch_home>/hub`` when ``backbone.torch_home`` is set, else
``torch.hub.get_dir()`` (which honours ``TORCH_HOME``). That file is the one loading
path: nothing is ever downloaded (this machine may be offline). When it cannot be used,
:func:`imagenet_weights_problem` gives the one message that says so, naming the file to
put there and where to get it; :func:`build_model` raises it as
:class:`~evotune.backbones.registry.BackboneWeightsError`, and the parameter checks run
before a ``kedro run`` (:mod:`evotune.validation`, :mod:`evotune.paper_setting`) report
the same text.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import Tensor

from .checkpoint import load_checkpoint, model_from_checkpoint
from .registry import (
    _ALIASES,
    ARCHITECTURES,
    PARAMS_FILE,
    ArchSpec,
    BackboneWeightsError,
    _construct_torchvision,
    _empty_torchvision,
    _normalise_name,
    get_arch,
    staged_from_torchvision,
)
from .staged import StagedModel, replace_head
from .timm_models import TIMM_WEIGHT_SUFFIXES, build_timm, is_timm, timm_weights_problem

__all__ = ["ImageRecipe", "build_model", "imagenet_weights_path", "imagenet_weights_problem", "weights_recipe"]

_DENSENET_LEGACY_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)


def _no_imagenet_weights(spec: ArchSpec) -> str:
    return (
        f"Architecture {spec.name!r} has no ImageNet weights. Set `backbone.weights` in "
        f"{PARAMS_FILE} to none (random initialisation) or to the path of an evotune "
        "backbone checkpoint, or pick an architecture that has them: "
        f"{', '.join(n for n, s in ARCHITECTURES.items() if s.imagenet_weights)}."
    )


def _imagenet_weights_enum(spec: ArchSpec):
    import torchvision.models

    if spec.imagenet_weights is None:
        raise BackboneWeightsError(_no_imagenet_weights(spec))
    return torchvision.models.get_weight(spec.imagenet_weights)


def imagenet_weights_path(arch: str, torch_home: str | os.PathLike | None = None) -> Path:
    """Where the ImageNet weights of ``arch`` are expected in the torch hub cache.

    ``<torch_home>/hub/checkpoints/<file>`` if ``torch_home`` is given, else
    ``torch.hub.get_dir()/checkpoints/<file>`` (which honours ``TORCH_HOME``).
    """
    spec = get_arch(arch)
    url = _imagenet_weights_enum(spec).url
    hub_dir = (
        os.path.join(os.path.expanduser(os.fspath(torch_home)), "hub")
        if torch_home is not None
        else torch.hub.get_dir()
    )
    return Path(hub_dir) / "checkpoints" / os.path.basename(urlparse(url).path)


def imagenet_weights_problem(arch: str, torch_home: str | os.PathLike | None = None) -> str | None:
    """The one message saying why the ImageNet weights of ``arch`` cannot be used here, or
    ``None`` when their file is in the torch hub cache. Looks at the file system only."""
    if is_timm(arch):
        return timm_weights_problem(arch)
    spec = get_arch(arch)
    if spec.imagenet_weights is None:
        return _no_imagenet_weights(spec)
    path = imagenet_weights_path(spec.name, torch_home)
    if path.is_file():
        return None
    return (
        f"ImageNet weights of {spec.name} missing: expected the file {path} in the local torch hub "
        f"cache (backbone.torch_home={None if torch_home is None else os.fspath(torch_home)!r}, "
        f"TORCH_HOME={os.environ.get('TORCH_HOME', 'unset')}). This machine cannot download them "
        f"(weights are never downloaded; it may be offline): on a machine with internet download {_imagenet_weights_enum(spec).url} "
        f"and copy it to {path}, or set backbone.torch_home in {PARAMS_FILE} (or TORCH_HOME) to a "
        "folder whose hub/checkpoints/ holds it. Otherwise set `backbone.weights` in "
        f"{PARAMS_FILE} to the path of an evotune backbone checkpoint, or to none for random "
        "initialisation."
    )


def _load_imagenet_state_dict(spec: ArchSpec, torch_home: str | os.PathLike | None) -> Mapping[str, Tensor]:
    problem = imagenet_weights_problem(spec.name, torch_home)
    if problem is not None:
        raise BackboneWeightsError(problem)
    path = imagenet_weights_path(spec.name, torch_home)
    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise BackboneWeightsError(
            f"ImageNet weights file for {spec.name!r} at {path} could not be read "
            f"({type(exc).__name__}: {exc}). It is probably truncated or corrupt: delete "
            f"it and fetch {_imagenet_weights_enum(spec).url} again."
        ) from exc
    if not isinstance(state_dict, Mapping):
        raise BackboneWeightsError(f"{path} does not hold a state dict (got {type(state_dict).__name__})")
    if spec.name.startswith("densenet"):
        # The published DenseNet files use old 'norm.1'-style keys (as torchvision's own
        # densenet loader does, rename them in place, keeping the file's _metadata).
        for key in list(state_dict.keys()):
            match = _DENSENET_LEGACY_KEY.match(key)
            if match:
                state_dict[match.group(1) + match.group(2)] = state_dict.pop(key)
    return state_dict


_RANDOM_WEIGHTS = {"none", "random", "scratch"}


def build_model(
    arch: str,
    num_classes: int,
    *,
    weights: str | os.PathLike | None = None,
    torch_home: str | os.PathLike | None = None,
) -> StagedModel:
    """Build a :class:`StagedModel` (on CPU, training mode).

    Args:
        arch: registry name (see :data:`~evotune.backbones.registry.ARCHITECTURES`).
        num_classes: output size of the head.
        weights: ``None`` (or ``"none"``/``"random"``): torchvision's random init.
            ``"imagenet"``: torchvision ImageNet weights from the local torch hub cache,
            then a fresh head for ``num_classes``. Any other value is read as the path of
            an evotune backbone checkpoint (see
            :func:`~evotune.backbones.checkpoint.model_from_checkpoint`), whose arch must be ``arch``.
        torch_home: overrides ``TORCH_HOME`` for locating ImageNet weights.

    Raises:
        UnknownArchitectureError: unknown ``arch``.
        BackboneWeightsError: weights missing, unreadable or not matching ``arch``.
    """
    spec = get_arch(arch)
    if int(num_classes) < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if is_timm(spec.name) and not (
        isinstance(weights, (str, os.PathLike)) and not os.fspath(weights).endswith(TIMM_WEIGHT_SUFFIXES)
        and os.fspath(weights).strip().lower() not in (_RANDOM_WEIGHTS | {"imagenet"})
    ):  # random init, the hub cache's pretrained weights or a timm weights file; a checkpoint below
        return build_timm(spec.name, num_classes, weights=weights)
    if weights is None or (isinstance(weights, str) and weights.strip().lower() in _RANDOM_WEIGHTS):
        tv_model = _construct_torchvision(spec.name, num_classes, random_init=True)
        return staged_from_torchvision(spec.name, tv_model)
    if isinstance(weights, str) and weights.strip().lower() == "imagenet":
        state_dict = _load_imagenet_state_dict(spec, torch_home)
        weights_enum = _imagenet_weights_enum(spec)
        tv_model = _empty_torchvision(spec.name, len(weights_enum.meta["categories"]), None)
        try:
            tv_model.load_state_dict(state_dict, strict=True)
        except RuntimeError as exc:
            raise BackboneWeightsError(
                f"ImageNet weights file {imagenet_weights_path(spec.name, torch_home)} does not "
                f"match torchvision's {spec.name}: {exc}"
            ) from exc
        return replace_head(staged_from_torchvision(spec.name, tv_model), num_classes)
    # A checkpoint path.
    ckpt = load_checkpoint(weights)
    same = str(ckpt.arch).strip() if is_timm(ckpt.arch) else _ALIASES.get(_normalise_name(str(ckpt.arch)))
    if same != spec.name:
        raise BackboneWeightsError(
            f"Checkpoint {weights} holds a {ckpt.arch!r} backbone but `backbone.arch` is "
            f"{spec.name!r}: set `backbone.arch` in {PARAMS_FILE} to {ckpt.arch!r} or "
            "point `backbone.weights` at a checkpoint of this architecture."
        )
    return model_from_checkpoint(ckpt, num_classes)



# --------------------------------------------------------------------------------------
# The weights' own preprocessing
# --------------------------------------------------------------------------------------
#: the resize interpolations the one-time decoding knows (PIL filters, as torchvision's Resize
#: uses them on PIL images)
INTERPOLATIONS = ("bilinear", "bicubic")


@dataclass(frozen=True)
class ImageRecipe:
    """How images are prepared for a backbone's weights: the shorter side resized to
    ``resize_size`` with ``interpolation``, a ``crop_size`` centre crop, then ``(x - mean) / std``.
    ``origin`` says where the values come from (for the log and the exported metadata)."""

    resize_size: int
    crop_size: int
    interpolation: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    origin: str


def _spec_recipe(spec: ArchSpec, origin: str) -> ImageRecipe:
    interpolation = spec.interpolation if spec.interpolation in INTERPOLATIONS else "bilinear"
    return ImageRecipe(int(spec.resize_size), int(spec.input_size), interpolation, tuple(spec.mean),
                       tuple(spec.std), origin)


def torchvision_recipe(spec: ArchSpec) -> ImageRecipe:
    """The preprocessing of ``spec``'s torchvision ImageNet weights, read from their own
    ``weights.transforms()`` (resize, crop, interpolation, mean, std). Needs no weights file."""
    weights = _imagenet_weights_enum(spec)
    tf = weights.transforms()
    size = lambda v: int(v[0] if isinstance(v, (list, tuple)) else v)  # noqa: E731
    interpolation = getattr(tf.interpolation, "value", str(tf.interpolation))
    if interpolation not in INTERPOLATIONS:
        raise BackboneWeightsError(f"{spec.imagenet_weights}.transforms() resizes with {interpolation!r}; the decoding "
                                   f"knows {', '.join(INTERPOLATIONS)}: set data.image.interpolation.")
    return ImageRecipe(size(tf.resize_size), size(tf.crop_size), interpolation, tuple(float(v) for v in tf.mean),
                       tuple(float(v) for v in tf.std), f"torchvision {spec.imagenet_weights}.transforms()")


def weights_recipe(arch: str, weights: str | os.PathLike | None = "imagenet") -> ImageRecipe:
    """The preprocessing the backbone ``arch`` with ``weights`` (``backbone.weights``) was trained
    with: what ``data.image`` defaults to.

    * ``imagenet``: torchvision's ``weights.transforms()``; for ``timm/<name>``, timm's
      ``resolve_data_config`` of the model (:func:`~evotune.backbones.timm_models.timm_spec`).
    * ``none`` / ``source``: the architecture's registry entry (:class:`ArchSpec`: the embedded
      task's ``resnet10`` is 32 px; a torchvision architecture, its ImageNet weights' values).
    * a checkpoint file: the sizes and mean/std it records (bilinear).

    Reads no weights file, except a checkpoint's."""
    spec = get_arch(str(arch))
    w = "none" if weights is None else os.fspath(weights).strip()
    if w.lower() == "imagenet":
        if is_timm(spec.name):
            return _spec_recipe(spec, f"timm {spec.name} resolve_data_config")
        return torchvision_recipe(spec)
    if w.lower() in _RANDOM_WEIGHTS | {"source"}:
        return _spec_recipe(spec, f"{spec.name} ({w} weights: the architecture's registered input size)")
    if is_timm(spec.name) and w.endswith(TIMM_WEIGHT_SUFFIXES):
        return _spec_recipe(spec, f"timm {spec.name} resolve_data_config")
    ckpt = load_checkpoint(w)
    return ImageRecipe(int(ckpt.resize_size), int(ckpt.input_size), "bilinear", tuple(ckpt.mean), tuple(ckpt.std),
                       f"checkpoint {w}")
