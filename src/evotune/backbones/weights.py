"""Where a backbone's weights come from: random initialisation, torchvision ImageNet weights
(downloaded into the torch hub cache on first use), a torchvision-format weights file at a URL,
or an evotune backbone checkpoint file.

ImageNet weights
----------------
``build_model(arch, n, weights="imagenet")`` loads torchvision's ImageNet weights of ``arch``
(the paper's choice: the enum member named in the registry, e.g. ``ResNet50_Weights.IMAGENET1K_V2``);
``weights`` may also name a member of that enum: ``IMAGENET1K_V1``, ``IMAGENET1K_V2``, ``DEFAULT``.
The file is ``<hub dir>/checkpoints/<file named in the weights URL>``, where the hub dir is
``<torch_home>/hub`` when ``backbone.torch_home`` is set, else ``torch.hub.get_dir()`` (which
honours ``TORCH_HOME``). When it is not there it is downloaded as torchvision does it
(``torch.hub.load_state_dict_from_url``: a progress bar on a terminal, the SHA-256 prefix in the
file name checked before the file is moved into the cache; see :mod:`evotune.downloads`).

``weights: https://host/path/<name>-<sha256 prefix>.pth`` downloads a torchvision-format state dict
of ``arch`` with its 1000-class ImageNet head (a mirror's copy of torchvision's file, or weights of
your own named the same way) into the same cache, with the same hash check.

Offline (``EVOTUNE_OFFLINE=1``, or a host that does not answer), :func:`imagenet_weights_problem`
gives the one message that says so, naming the file, where it goes and its URL;
:func:`build_model` raises it as :class:`~evotune.backbones.registry.BackboneWeightsError`, and the
parameter checks run before a ``kedro run`` (:mod:`evotune.validation`, :mod:`evotune.paper_setting`)
report the same text before anything trains.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import Tensor

from ..downloads import DownloadError, download_problem, fetch_state_dict
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

__all__ = ["TORCHVISION_VARIANTS", "build_model", "imagenet_variant", "imagenet_weights_path", "imagenet_weights_problem",
           "is_weights_url", "url_weights_path", "url_weights_problem"]

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


#: ``backbone.weights`` values naming a member of the architecture's torchvision weights enum
TORCHVISION_VARIANTS = ("IMAGENET1K_V1", "IMAGENET1K_V2", "DEFAULT")


def imagenet_variant(weights: object) -> str | None:
    """``"imagenet"`` or the torchvision enum member ``weights`` names (``IMAGENET1K_V1``, ``DEFAULT``, ...),
    else None (random init, a URL or a checkpoint path)."""
    if not isinstance(weights, str):
        return None
    w = weights.strip()
    if w.lower() == "imagenet":
        return "imagenet"
    if re.fullmatch(r"(?:IMAGENET1K\w*|DEFAULT)", w.upper()):
        return w.upper()
    return None


def is_weights_url(weights: object) -> bool:
    """Whether ``weights`` is the URL of a torchvision-format weights file."""
    return isinstance(weights, str) and weights.strip().lower().startswith(("http://", "https://"))


def _imagenet_weights_enum(spec: ArchSpec, variant: str | None = None):
    import torchvision.models

    if spec.imagenet_weights is None:
        raise BackboneWeightsError(_no_imagenet_weights(spec))
    default = torchvision.models.get_weight(spec.imagenet_weights)
    if variant in (None, "imagenet"):
        return default
    members = type(default).__members__
    if variant not in members:
        raise BackboneWeightsError(
            f"backbone.weights {variant!r}: torchvision's {type(default).__name__} of {spec.name} has no such "
            f"weights; set `backbone.weights` in {PARAMS_FILE} to one of {', '.join(members)} or to imagenet "
            f"(the paper's choice, {spec.imagenet_weights.split('.')[-1]})."
        )
    return members[variant]


def _hub_dir(torch_home: str | os.PathLike | None) -> str:
    return (os.path.join(os.path.expanduser(os.fspath(torch_home)), "hub") if torch_home is not None
            else torch.hub.get_dir())


def _url_file(url: str) -> str:
    return os.path.basename(urlparse(url).path)


def imagenet_weights_path(arch: str, torch_home: str | os.PathLike | None = None, variant: str | None = None) -> Path:
    """Where the ImageNet weights of ``arch`` (``variant``: an enum member name; default the paper's) are
    kept in the torch hub cache: ``<torch_home>/hub/checkpoints/<file>`` if ``torch_home`` is given, else
    ``torch.hub.get_dir()/checkpoints/<file>`` (which honours ``TORCH_HOME``).
    """
    spec = get_arch(arch)
    return Path(_hub_dir(torch_home)) / "checkpoints" / _url_file(_imagenet_weights_enum(spec, variant).url)


def url_weights_path(url: str, torch_home: str | os.PathLike | None = None) -> Path:
    """Where the weights file at ``url`` is kept in the torch hub cache."""
    return Path(_hub_dir(torch_home)) / "checkpoints" / _url_file(url.strip())


def _cache_advice(torch_home: str | os.PathLike | None, what: str = "") -> str:
    return (f" ({what}backbone.torch_home={None if torch_home is None else os.fspath(torch_home)!r}, "
            f"TORCH_HOME={os.environ.get('TORCH_HOME', 'unset')}), or set backbone.torch_home in {PARAMS_FILE} "
            "(or TORCH_HOME) to a folder whose hub/checkpoints/ holds it. Otherwise set `backbone.weights` in "
            f"{PARAMS_FILE} to the path of an evotune backbone checkpoint, or to none for random initialisation")


def imagenet_weights_problem(arch: str, torch_home: str | os.PathLike | None = None,
                             variant: str | None = None) -> str | None:
    """The one message saying why the ImageNet weights of ``arch`` cannot be used here, or ``None`` when
    their file is in the torch hub cache or can be downloaded (online: one HEAD request to its host)."""
    if is_timm(arch):
        return timm_weights_problem(arch)
    spec = get_arch(arch)
    try:
        enum = _imagenet_weights_enum(spec, variant)
    except BackboneWeightsError as exc:
        return str(exc)
    path = imagenet_weights_path(spec.name, torch_home, variant)
    if path.is_file():
        return None
    return download_problem(f"ImageNet weights of {spec.name}", enum.url, path,
                            _cache_advice(torch_home, f"torchvision's {type(enum).__name__}.{enum.name}; "))


def url_weights_problem(url: str, torch_home: str | os.PathLike | None = None) -> str | None:
    """Why the weights file at ``url`` cannot be used here, or None (cached, or its host answers)."""
    path = url_weights_path(url, torch_home)
    if not re.search(r"-[0-9a-f]{8,}\.\w+$", path.name):
        return (f"backbone.weights {url}: the file name must end in '-<first 8 or more hex digits of its SHA-256>"
                f".<ext>' (as torchvision names its files, e.g. resnet50-11ad3fa6.pth) so that the download can be "
                "checked; rename the file on its server.")
    if path.is_file():
        return None
    return download_problem(f"Weights file {path.name}", url.strip(), path, _cache_advice(torch_home))


def _read_cached(path: Path, url: str, what: str) -> Mapping[str, Tensor]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise BackboneWeightsError(
            f"{what} file at {path} could not be read ({type(exc).__name__}: {exc}). It is probably "
            f"truncated or corrupt: delete it and run again to download {url} again."
        ) from exc


def _load_weights_file(path: Path, url: str, what: str, problem: str | None) -> Mapping[str, Tensor]:
    if path.is_file():
        state_dict = _read_cached(path, url, what)
    else:
        if problem is not None:
            raise BackboneWeightsError(problem)
        try:
            state_dict = fetch_state_dict(url, path, what=what)
        except DownloadError as exc:
            raise BackboneWeightsError(str(exc)) from exc
    if not isinstance(state_dict, Mapping):
        raise BackboneWeightsError(f"{path} does not hold a state dict (got {type(state_dict).__name__})")
    return state_dict


def _fix_legacy_keys(spec: ArchSpec, state_dict: Mapping[str, Tensor]) -> Mapping[str, Tensor]:
    if spec.name.startswith("densenet"):
        # The published DenseNet files use old 'norm.1'-style keys (as torchvision's own
        # densenet loader does, rename them in place, keeping the file's _metadata).
        for key in list(state_dict.keys()):
            match = _DENSENET_LEGACY_KEY.match(key)
            if match:
                state_dict[match.group(1) + match.group(2)] = state_dict.pop(key)
    return state_dict


def _load_imagenet_state_dict(spec: ArchSpec, torch_home: str | os.PathLike | None,
                              variant: str | None = None) -> Mapping[str, Tensor]:
    enum = _imagenet_weights_enum(spec, variant)
    path = imagenet_weights_path(spec.name, torch_home, variant)
    problem = None if path.is_file() else imagenet_weights_problem(spec.name, torch_home, variant)
    return _fix_legacy_keys(spec, _load_weights_file(path, enum.url, f"ImageNet weights of {spec.name}", problem))


def _torchvision_from_state_dict(spec: ArchSpec, state_dict, n_classes: int, path: Path, num_classes: int):
    tv_model = _empty_torchvision(spec.name, n_classes, None)
    try:
        tv_model.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:
        raise BackboneWeightsError(f"Weights file {path} does not match torchvision's {spec.name}: {exc}") from exc
    return replace_head(staged_from_torchvision(spec.name, tv_model), num_classes)


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
            ``"imagenet"`` (or a torchvision enum member name: ``IMAGENET1K_V1``, ``IMAGENET1K_V2``,
            ``DEFAULT``): torchvision ImageNet weights from the torch hub cache, downloaded there
            when missing, then a fresh head for ``num_classes``. An ``http(s)://`` URL: a
            torchvision-format file named ``<name>-<sha256 prefix>.<ext>``, downloaded and
            checked the same way. Any other value is read as the path of
            an evotune backbone checkpoint (see
            :func:`~evotune.backbones.checkpoint.model_from_checkpoint`), whose arch must be ``arch``.
        torch_home: overrides ``TORCH_HOME`` for the torch hub cache.

    Raises:
        UnknownArchitectureError: unknown ``arch``.
        BackboneWeightsError: weights missing and not downloadable (offline), a corrupt or truncated
            download, or weights unreadable or not matching ``arch``.
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
    variant = imagenet_variant(weights)
    if variant is not None:
        state_dict = _load_imagenet_state_dict(spec, torch_home, variant)
        n_imagenet = len(_imagenet_weights_enum(spec, variant).meta["categories"])
        return _torchvision_from_state_dict(spec, state_dict, n_imagenet,
                                            imagenet_weights_path(spec.name, torch_home, variant), num_classes)
    if is_weights_url(weights):
        url = str(weights).strip()
        path = url_weights_path(url, torch_home)
        problem = None if path.is_file() else url_weights_problem(url, torch_home)
        state_dict = _fix_legacy_keys(spec, _load_weights_file(path, url, f"Weights file {path.name}", problem))
        return _torchvision_from_state_dict(spec, state_dict, 1000, path, num_classes)
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

