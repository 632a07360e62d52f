"""Backbone architectures and their block partitions: the one place that knows them.

Staged design
-------------
BioTune-style selective fine-tuning cuts a backbone into ordered *blocks* (SPEC
section 5); a genome decides which blocks train and at what learning rate. This module
makes the partition structural instead of a list of parameter-name prefixes:

* A :class:`StagedModel` holds ``stages: nn.ModuleList`` with **exactly one stage per
  block, in forward order**, and ``model(x)`` is literally ``stages[-1](...stages[0](x))``.
  Block ``i``'s parameters are ``model.stages[i].parameters()``; the classification
  head is always the last stage.
* The stages reference **the same module objects** as the torchvision model they were
  cut from (:func:`staged_from_torchvision`), so weights loaded into the torchvision
  model before wrapping are kept, and the composition reproduces the torchvision
  eval-mode output exactly. The only modules the wrapper adds are parameter-free glue
  (``nn.Flatten``, the functional ReLU/pooling torchvision applies in ``forward``,
  Inception's ``transform_input`` step).
* Because the model *is* a chain of stages, a training loop can run a frozen prefix once
  (:meth:`StagedModel.forward_until`) and feed cached activations to the trainable
  suffix (:meth:`StagedModel.forward_from`). No stage modifies its input in place, so
  cached activations stay valid.

Inception-v3 auxiliary classifier policy
----------------------------------------
SPEC lists ``AuxLogits`` as a block between ``Mixed_6e`` and ``Mixed_7a``. Its stage is
a **pass-through on the main path**: it returns its input unchanged. When the model is in
training mode, it also runs the auxiliary classifier on that input and appends the
result to :attr:`StagedModel.aux_logits` (the training loop adds ``0.4 * CE`` on it,
torchvision's reference recipe). ``aux_logits`` is emptied at the start of every
forward pass (``forward``, ``forward_from`` and ``forward_until``), so it only ever holds
the current pass's auxiliary logits. In eval mode it stays empty. The aux classifier
needs a 17x17 ``Mixed_6e`` map, i.e. a 299x299 input, in training mode; eval mode
works down to 75x75. Head replacement replaces both ``fc`` and ``AuxLogits.fc``.

Inception models built here always use ``transform_input=True`` (as torchvision does
for its ImageNet weights): inputs are normalised with the ImageNet mean/std like every
other architecture, and the stem converts them to the [-1, 1] scaling the Google weights
expect. For random initialisation this is only a fixed per-channel affine map.

ImageNet weights, offline
-------------------------
``build_model(arch, n, weights="imagenet")`` loads the torchvision ImageNet weights from
the local torch hub cache (``torch.hub.get_dir()/checkpoints/<file from the URL>``,
honouring ``TORCH_HOME`` or the ``torch_home`` argument). It never downloads unless
``allow_download=True``; a missing file raises :class:`BackboneWeightsError` naming the
expected path and the URL.

Checkpoints
-----------
:func:`make_checkpoint` / :func:`load_checkpoint` / :func:`model_from_checkpoint`
store a backbone (e.g. one trained on a user's source task) as a plain dict that
``torch.load(weights_only=True)`` can read. Its ``state_dict`` uses the
:class:`StagedModel` parameter names (``stages.<block>.<...>``).
"""

from __future__ import annotations

import math
import operator
import os
import re
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import Tensor, nn

from .errors import EvotuneError

__all__ = [
    "ARCHITECTURES",
    "CHECKPOINT_FORMAT",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ArchSpec",
    "BackboneWeightsError",
    "StagedModel",
    "UnknownArchitectureError",
    "block_parameter_names",
    "build_model",
    "count_parameters",
    "get_arch",
    "imagenet_weights_path",
    "load_checkpoint",
    "make_checkpoint",
    "model_from_checkpoint",
    "replace_head",
    "construct_from_description",
    "staged_from_torchvision",
    "to_torchvision",
    "torchvision_constructor",
    "torchvision_description",
    "torchvision_key_map",
    "torchvision_state_dict",
]

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

#: Value of the ``"format"`` key of every checkpoint written by :func:`make_checkpoint`.
CHECKPOINT_FORMAT = "evotune-backbone-v1"

_PARAMS_FILE = "conf/base/parameters_backbone.yml"


# --------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ArchSpec:
    """Static description of a registered backbone architecture.

    Attributes:
        name: registry key, e.g. ``"resnet50"``.
        block_names: names of the blocks in forward order; the last one is the head.
        input_size: centre-crop size the ImageNet weights expect.
        resize_size: resize (shorter side) before the centre crop.
        imagenet_weights: torchvision weights enum name, e.g.
            ``"ResNet50_Weights.IMAGENET1K_V2"``; ``None`` if no ImageNet weights exist.
        mean, std: input normalisation.
        interpolation: resize interpolation of the weights' transforms
            (``"bilinear"`` or ``"bicubic"``).
    """

    name: str
    block_names: tuple[str, ...]
    input_size: int
    resize_size: int
    imagenet_weights: str | None
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"

    @property
    def num_blocks(self) -> int:
        return len(self.block_names)


_RESNET_BLOCKS = ("stem", "layer1", "layer2", "layer3", "layer4", "fc")
_DENSENET_BLOCKS = (
    "stem",
    "denseblock1",
    "transition1",
    "denseblock2",
    "transition2",
    "denseblock3",
    "transition3",
    "denseblock4",
    "classifier",
)
_VGG_BLOCKS = ("conv1", "conv2", "conv3", "conv4", "conv5", "classifier")
_INCEPTION_BLOCKS = (
    "stem",
    "Mixed_5b",
    "Mixed_5c",
    "Mixed_5d",
    "Mixed_6a",
    "Mixed_6b",
    "Mixed_6c",
    "Mixed_6d",
    "Mixed_6e",
    "AuxLogits",
    "Mixed_7a",
    "Mixed_7b",
    "Mixed_7c",
    "fc",
)
_MOBILENET_V3_SMALL_BLOCKS = (
    "stem",
    "stage1",
    "stage2",
    "stage3",
    "stage4",
    "stage5",
    "last_conv",
    "classifier",
)
_EFFICIENTNET_BLOCKS = (
    "stem",
    "stage1",
    "stage2",
    "stage3",
    "stage4",
    "stage5",
    "stage6",
    "stage7",
    "last_conv",
    "classifier",
)

ARCHITECTURES: dict[str, ArchSpec] = {
    spec.name: spec
    for spec in (
        # Small, fast CPU model for the embedded offline task (no ImageNet weights).
        ArchSpec("resnet10", _RESNET_BLOCKS, 32, 32, None),
        ArchSpec("resnet18", _RESNET_BLOCKS, 224, 256, "ResNet18_Weights.IMAGENET1K_V1"),
        ArchSpec("resnet34", _RESNET_BLOCKS, 224, 256, "ResNet34_Weights.IMAGENET1K_V1"),
        ArchSpec("resnet50", _RESNET_BLOCKS, 224, 232, "ResNet50_Weights.IMAGENET1K_V2"),
        ArchSpec("resnet101", _RESNET_BLOCKS, 224, 232, "ResNet101_Weights.IMAGENET1K_V2"),
        ArchSpec("densenet121", _DENSENET_BLOCKS, 224, 256, "DenseNet121_Weights.IMAGENET1K_V1"),
        ArchSpec("vgg19", _VGG_BLOCKS, 224, 256, "VGG19_Weights.IMAGENET1K_V1"),
        ArchSpec("vgg19_bn", _VGG_BLOCKS, 224, 256, "VGG19_BN_Weights.IMAGENET1K_V1"),
        ArchSpec("inception_v3", _INCEPTION_BLOCKS, 299, 342, "Inception_V3_Weights.IMAGENET1K_V1"),
        ArchSpec(
            "mobilenet_v3_small",
            _MOBILENET_V3_SMALL_BLOCKS,
            224,
            256,
            "MobileNet_V3_Small_Weights.IMAGENET1K_V1",
        ),
        ArchSpec(
            "efficientnet_b0",
            _EFFICIENTNET_BLOCKS,
            224,
            256,
            "EfficientNet_B0_Weights.IMAGENET1K_V1",
            interpolation="bicubic",
        ),
    )
}


class UnknownArchitectureError(EvotuneError):
    """Raised for a backbone name that is not in :data:`ARCHITECTURES`."""


class BackboneWeightsError(EvotuneError):
    """Raised when backbone weights (ImageNet cache file or checkpoint) cannot be used."""


def _normalise_name(name: str) -> str:
    return name.strip().lower().replace("-", "").replace("_", "")


_ALIASES: dict[str, str] = {_normalise_name(key): key for key in ARCHITECTURES}


def get_arch(name: str) -> ArchSpec:
    """Return the :class:`ArchSpec` registered under ``name``.

    Matching ignores case, ``-`` and ``_`` (``"ResNet-50"`` finds ``"resnet50"``).

    Raises:
        UnknownArchitectureError: listing the valid names.
    """
    key = _ALIASES.get(_normalise_name(name)) if isinstance(name, str) else None
    if key is None:
        raise UnknownArchitectureError(
            f"Unknown backbone architecture {name!r}. Valid names: "
            f"{', '.join(ARCHITECTURES)}. Set `backbone.arch` in {_PARAMS_FILE} "
            "to one of them."
        )
    return ARCHITECTURES[key]


# --------------------------------------------------------------------------------------
# The staged model
# --------------------------------------------------------------------------------------
class _InceptionStem(nn.Sequential):
    """Inception-v3 stem: optional ``transform_input`` step, then the stem layers."""

    def __init__(self, layers: Mapping[str, nn.Module], transform_input: bool) -> None:
        super().__init__(OrderedDict(layers))
        self.transform_input = bool(transform_input)

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        if self.transform_input:
            # Same arithmetic as torchvision's Inception3._transform_input (bit-exact).
            x_ch0 = torch.unsqueeze(x[:, 0], 1) * (0.229 / 0.5) + (0.485 - 0.5) / 0.5
            x_ch1 = torch.unsqueeze(x[:, 1], 1) * (0.224 / 0.5) + (0.456 - 0.5) / 0.5
            x_ch2 = torch.unsqueeze(x[:, 2], 1) * (0.225 / 0.5) + (0.406 - 0.5) / 0.5
            x = torch.cat((x_ch0, x_ch1, x_ch2), 1)
        return super().forward(x)

    def extra_repr(self) -> str:
        return f"transform_input={self.transform_input}"


class _AuxStage(nn.Module):
    """Pass-through stage that, in training mode, records Inception's aux logits.

    The result goes to the owning :class:`StagedModel`'s ``aux_logits`` list (the
    ``_sink``, attached by the model).
    """

    def __init__(self, aux: nn.Module | None) -> None:
        super().__init__()
        self.aux = aux
        self._sink: list[Tensor] = []

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        if self.training and self.aux is not None:
            self._sink.append(self.aux(x))
        return x


class StagedModel(nn.Module):
    """A backbone as an ordered chain of stages, one stage per fine-tuning block.

    Attributes:
        arch: registry name of the architecture.
        block_names: one name per block/stage, forward order; the last is the head.
        stages: the stages; ``forward(x)`` composes them in order.
    """

    def __init__(self, arch: str, block_names: Sequence[str], stages: Sequence[nn.Module]) -> None:
        super().__init__()
        block_names = list(block_names)
        stages = list(stages)
        if len(block_names) != len(stages):
            raise ValueError(f"{len(block_names)} block names for {len(stages)} stages")
        if len(set(block_names)) != len(block_names):
            raise ValueError(f"duplicate block names: {block_names}")
        if not stages:
            raise ValueError("a StagedModel needs at least one stage (the head)")
        self.arch = arch
        self.block_names = block_names
        self.stages = nn.ModuleList(stages)
        self._aux_logits: list[Tensor] = []
        for stage in self.stages:
            if isinstance(stage, _AuxStage):
                stage._sink = self._aux_logits

    # -- structure ---------------------------------------------------------------------
    @property
    def num_blocks(self) -> int:
        """Number of blocks (= stages), head included."""
        return len(self.stages)

    @property
    def head_index(self) -> int:
        """Index of the head block (always the last)."""
        return len(self.stages) - 1

    @property
    def aux_logits(self) -> list[Tensor]:
        """Auxiliary logits of the current forward pass (Inception, training mode only).

        Emptied at the start of every forward pass; empty in eval mode and for
        architectures without an auxiliary classifier.
        """
        return self._aux_logits

    @property
    def num_classes(self) -> int:
        """Output size of the classification head."""
        return _head_linear(self)[1].out_features

    # -- forward -----------------------------------------------------------------------
    def _check_index(self, i: int, what: str) -> int:
        try:
            index = operator.index(i)
        except TypeError:
            index = -1
        if isinstance(i, bool) or not 0 <= index <= len(self.stages):
            raise IndexError(f"{what} must be an int in [0, {len(self.stages)}], got {i!r}")
        return index

    def forward(self, x: Tensor) -> Tensor:
        """Logits of ``x`` (always a plain Tensor)."""
        return self.forward_from(0, x)

    def forward_from(self, start: int, h: Tensor) -> Tensor:
        """Run ``stages[start:]`` on ``h`` (the output of ``stages[start - 1]``).

        Like every forward pass this first empties :attr:`aux_logits`, so aux logits
        recorded by an earlier :meth:`forward_until` (e.g. a cached frozen prefix) are
        dropped; only those of ``stages[start:]`` remain.
        """
        start = self._check_index(start, "start")
        self._aux_logits.clear()
        for stage in self.stages[start:]:
            h = stage(h)
        return h

    def forward_until(self, stop: int, x: Tensor) -> Tensor:
        """Run ``stages[:stop]`` on ``x``; ``forward_from(stop, forward_until(stop, x))``
        equals ``forward(x)``."""
        stop = self._check_index(stop, "stop")
        self._aux_logits.clear()
        for stage in self.stages[:stop]:
            x = stage(x)
        return x

    def extra_repr(self) -> str:
        return f"arch={self.arch!r}, block_names={self.block_names}"


# --------------------------------------------------------------------------------------
# Cutting torchvision models into stages
# --------------------------------------------------------------------------------------
def _seq(**modules: nn.Module) -> nn.Sequential:
    return nn.Sequential(OrderedDict(modules))


def _group(modules: nn.Sequential, indices: Sequence[int]) -> nn.Module:
    """One module of ``modules`` as is, or several as a Sequential keeping their keys."""
    items = list(modules._modules.items())
    if len(indices) == 1:
        return items[indices[0]][1]
    return nn.Sequential(OrderedDict(items[i] for i in indices))


def _stage_resnet(m: nn.Module) -> list[nn.Module]:
    return [
        _seq(conv1=m.conv1, bn1=m.bn1, relu=m.relu, maxpool=m.maxpool),
        m.layer1,
        m.layer2,
        m.layer3,
        m.layer4,
        _seq(avgpool=m.avgpool, flatten=nn.Flatten(1), fc=m.fc),
    ]


def _stage_densenet(m: nn.Module) -> list[nn.Module]:
    f = m.features
    return [
        _seq(conv0=f.conv0, norm0=f.norm0, relu0=f.relu0, pool0=f.pool0),
        f.denseblock1,
        f.transition1,
        f.denseblock2,
        f.transition2,
        f.denseblock3,
        f.transition3,
        # torchvision: F.relu(features(x), inplace=True) after norm5.
        _seq(denseblock4=f.denseblock4, norm5=f.norm5, relu5=nn.ReLU(inplace=True)),
        # torchvision: adaptive_avg_pool2d(out, (1, 1)), flatten(out, 1), classifier.
        _seq(avgpool=nn.AdaptiveAvgPool2d((1, 1)), flatten=nn.Flatten(1), classifier=m.classifier),
    ]


def _stage_vgg(m: nn.Module) -> list[nn.Module]:
    items = list(m.features._modules.items())
    stages: list[nn.Module] = []
    current: list[tuple[str, nn.Module]] = []
    for key, module in items:
        current.append((key, module))
        if isinstance(module, nn.MaxPool2d):
            stages.append(nn.Sequential(OrderedDict(current)))
            current = []
    if current:  # trailing layers after the last pool (not in torchvision VGGs)
        stages[-1] = nn.Sequential(OrderedDict(list(stages[-1]._modules.items()) + current))
    stages.append(_seq(avgpool=m.avgpool, flatten=nn.Flatten(1), classifier=m.classifier))
    return stages


def _stage_inception(m: nn.Module) -> list[nn.Module]:
    stem = _InceptionStem(
        {
            name: getattr(m, name)
            for name in (
                "Conv2d_1a_3x3",
                "Conv2d_2a_3x3",
                "Conv2d_2b_3x3",
                "maxpool1",
                "Conv2d_3b_1x1",
                "Conv2d_4a_3x3",
                "maxpool2",
            )
        },
        transform_input=m.transform_input,
    )
    mixed = [getattr(m, name) for name in _INCEPTION_BLOCKS[1:9]]  # Mixed_5b .. Mixed_6e
    return [
        stem,
        *mixed,
        _AuxStage(m.AuxLogits),
        m.Mixed_7a,
        m.Mixed_7b,
        m.Mixed_7c,
        _seq(avgpool=m.avgpool, dropout=m.dropout, flatten=nn.Flatten(1), fc=m.fc),
    ]


def _stage_mobilenet_v3(m: nn.Module) -> list[nn.Module]:
    f = m.features
    # Group the inverted-residual blocks by output width (torchvision's stage table).
    groups: list[list[int]] = []
    for i in range(1, len(f) - 1):
        if groups and f[i].out_channels == f[groups[-1][-1]].out_channels:
            groups[-1].append(i)
        else:
            groups.append([i])
    return [
        f[0],
        *[_group(f, g) for g in groups],
        f[len(f) - 1],
        _seq(avgpool=m.avgpool, flatten=nn.Flatten(1), classifier=m.classifier),
    ]


def _stage_efficientnet(m: nn.Module) -> list[nn.Module]:
    f = m.features
    return [
        *[f[i] for i in range(len(f))],  # stem, stage1..stage7, last 1x1 conv
        _seq(avgpool=m.avgpool, flatten=nn.Flatten(1), classifier=m.classifier),
    ]


# arch -> (how torchvision builds it: dotted callable and positional args, stager). The
# description is what the exported model's metadata records (see torchvision_constructor),
# so the project builds its models exactly the way a user without this package does.
_RESNET10_ARGS = [{"import": "torchvision.models.resnet.BasicBlock"}, [1, 1, 1, 1]]
_IMPLS: dict[str, tuple[tuple[str, list], Callable[[nn.Module], list[nn.Module]]]] = {
    # resnet10 has no torchvision builder: torchvision's ResNet(BasicBlock, [1, 1, 1, 1]).
    "resnet10": (("torchvision.models.resnet.ResNet", _RESNET10_ARGS), _stage_resnet),
    **{n: ((f"torchvision.models.{n}", []), _stage_resnet) for n in ("resnet18", "resnet34", "resnet50", "resnet101")},
    "densenet121": (("torchvision.models.densenet121", []), _stage_densenet),
    "vgg19": (("torchvision.models.vgg19", []), _stage_vgg),
    "vgg19_bn": (("torchvision.models.vgg19_bn", []), _stage_vgg),
    "inception_v3": (("torchvision.models.inception_v3", []), _stage_inception),
    "mobilenet_v3_small": (("torchvision.models.mobilenet_v3_small", []), _stage_mobilenet_v3),
    "efficientnet_b0": (("torchvision.models.efficientnet_b0", []), _stage_efficientnet),
}
assert set(_IMPLS) == set(ARCHITECTURES)

#: Only callables under this prefix are built from a description (a metadata file must
#: not be able to import arbitrary code).
_TORCHVISION_PREFIX = "torchvision.models."


def torchvision_constructor(
    arch: str, num_classes: int, *, arch_config: Mapping[str, Any] | None = None, random_init: bool = False
) -> dict[str, Any]:
    """How to build the bare torchvision model of ``arch``, as plain JSON-ready values.

    ``{"callable": dotted name, "args": [...], "kwargs": {...}, "python": one-line expression}``;
    an argument ``{"import": dotted name}`` stands for that object (resnet10's ``BasicBlock``).
    ``construct_from_description`` (or ``getattr(importlib.import_module(module), name)``
    on each dotted name) builds it; no weights are loaded. ``random_init=False`` skips
    Inception's slow initialiser (the caller loads a full state dict).
    """
    spec = get_arch(arch)
    (dotted, args), _ = _IMPLS[spec.name]
    kwargs: dict[str, Any] = {"num_classes": int(num_classes)}
    if spec.name == "inception_v3":
        kwargs["aux_logits"] = True
        kwargs["transform_input"] = bool((arch_config or {}).get("transform_input", True))
        kwargs["init_weights"] = bool(random_init)  # explicit: avoids torchvision's warning
    shown = [a["import"] if isinstance(a, dict) else repr(a) for a in args]
    shown += [f"{k}={v!r}" for k, v in kwargs.items()]
    return {
        "callable": dotted,
        "args": [dict(a) if isinstance(a, dict) else list(a) for a in args],
        "kwargs": kwargs,
        "python": f"{dotted}({', '.join(shown)})",
    }


def _import_dotted(dotted: Any) -> Any:
    import importlib

    if not isinstance(dotted, str) or not dotted.startswith(_TORCHVISION_PREFIX):
        raise ValueError(f"{dotted!r} is not a torchvision.models name; refusing to import it")
    module, _, attr = dotted.rpartition(".")
    return getattr(importlib.import_module(module), attr)


def construct_from_description(description: Mapping[str, Any]) -> nn.Module:
    """Build the torchvision model a :func:`torchvision_constructor` description names
    (on the current default device; wrap in ``torch.device("meta")`` to skip allocation)."""
    fn = _import_dotted(description["callable"])
    args = [
        _import_dotted(a["import"]) if isinstance(a, Mapping) else a for a in description.get("args", [])
    ]
    return fn(*args, **dict(description.get("kwargs", {})))


def _construct_torchvision(
    arch: str, num_classes: int, *, random_init: bool, arch_config: Mapping[str, Any] | None = None
) -> nn.Module:
    """Build the bare torchvision model of ``arch`` (no weights loaded).

    ``random_init=False`` skips initialisers that will be overwritten anyway (callers
    building on the meta device load a full state dict afterwards).
    """
    return construct_from_description(
        torchvision_constructor(arch, num_classes, arch_config=arch_config, random_init=random_init)
    )


def staged_from_torchvision(arch: str, model: nn.Module) -> StagedModel:
    """Wrap a torchvision model of architecture ``arch`` as a :class:`StagedModel`.

    The stages reference the torchvision model's own modules (weights are shared, not
    copied). Use the returned model from then on: :func:`replace_head` changes the
    staged model's head, not the torchvision model's attribute.
    """
    spec = get_arch(arch)
    _, stager = _IMPLS[spec.name]
    stages = stager(model)
    if len(stages) != spec.num_blocks:  # pragma: no cover - guards against layout drift
        raise ValueError(
            f"{spec.name}: cut into {len(stages)} stages, expected {spec.num_blocks} "
            f"({spec.block_names}); is this a different torchvision variant?"
        )
    staged = StagedModel(spec.name, spec.block_names, stages)
    staged.train(model.training)
    return staged


# --------------------------------------------------------------------------------------
# Head replacement
# --------------------------------------------------------------------------------------
def _head_linear(model: StagedModel) -> tuple[str, nn.Linear]:
    """(dotted name inside the head stage, module) of the final Linear of the head."""
    found: tuple[str, nn.Linear] | None = None
    for name, module in model.stages[-1].named_modules():
        if isinstance(module, nn.Linear):
            found = (name, module)
    if found is None:  # pragma: no cover
        raise ValueError(f"{model.arch}: no nn.Linear in the head block")
    return found


def _set_submodule(root: nn.Module, dotted: str, new: nn.Module) -> None:
    parent_name, _, child = dotted.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


def _fresh_linear(old: nn.Linear, num_classes: int, generator: torch.Generator | None) -> nn.Linear:
    """A new Linear(old.in_features, num_classes) with PyTorch's default init, on ``old``'s device.

    With a (CPU) ``generator`` the weights are drawn on the CPU in float32 and then moved, so
    a seed gives the same head on every device (and a CUDA model needs no CUDA generator).
    """
    seeded = generator is not None
    new = nn.Linear(
        old.in_features,
        int(num_classes),
        bias=old.bias is not None,
        device="cpu" if seeded else old.weight.device,
        dtype=torch.float32 if seeded else old.weight.dtype,
    )
    if seeded:  # same distribution as Linear.reset_parameters, seeded
        with torch.no_grad():
            nn.init.kaiming_uniform_(new.weight, a=math.sqrt(5), generator=generator)
            if new.bias is not None:
                bound = 1 / math.sqrt(old.in_features) if old.in_features > 0 else 0.0
                nn.init.uniform_(new.bias, -bound, bound, generator=generator)
        new = new.to(device=old.weight.device, dtype=old.weight.dtype)
    return new


def replace_head(
    model: StagedModel, num_classes: int, generator: torch.Generator | None = None
) -> StagedModel:
    """Replace the final classification Linear with a fresh one of ``num_classes`` outputs.

    Only the last Linear of the head block is replaced (VGG's / MobileNet's hidden
    classifier layers keep their weights). For Inception-v3 the auxiliary classifier's
    ``fc`` is replaced too. Works in place and returns ``model``. ``generator`` makes
    the new weights reproducible.
    """
    if int(num_classes) < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    name, old = _head_linear(model)
    _set_submodule(model.stages[-1], name, _fresh_linear(old, num_classes, generator))
    for stage in model.stages:
        if isinstance(stage, _AuxStage) and stage.aux is not None:
            stage.aux.fc = _fresh_linear(stage.aux.fc, num_classes, generator)
    return model


def head_linears(model: StagedModel) -> list[nn.Linear]:
    """The classification Linear layers a new task replaces: the head's last Linear
    (and Inception's auxiliary ``fc``). Hidden classifier layers are not among them."""
    out = [_head_linear(model)[1]]
    for stage in model.stages:
        if isinstance(stage, _AuxStage) and stage.aux is not None:
            out.append(stage.aux.fc)
    return out


def redraw_head(model: StagedModel, seed: int) -> None:
    """Re-initialise, in place, the layers :func:`replace_head` replaces, reproducibly from ``seed``
    (PyTorch's default Linear init). Every other weight stays as it is."""
    generator = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        for lin in head_linears(model):
            fresh = _fresh_linear(lin, lin.out_features, generator)
            lin.weight.copy_(fresh.weight)
            if lin.bias is not None:
                lin.bias.copy_(fresh.bias)


# --------------------------------------------------------------------------------------
# Back to plain torchvision: key mapping and state dicts (the exported model)
# --------------------------------------------------------------------------------------
def torchvision_key_map(model: StagedModel) -> dict[str, str]:
    """``{StagedModel state-dict key: torchvision state-dict key}`` for ``model``'s layout,
    in torchvision's key order.

    Derived, not written down: a fresh torchvision model of the same architecture, class
    count and constructor options is built on the meta device and cut into stages by the
    same stager as every other model; since the stages hold the torchvision model's own
    parameter and buffer objects, each staged key is matched to the torchvision key of the
    identical tensor. Every key must match, in both directions.
    """
    with torch.device("meta"):
        tv = _construct_torchvision(model.arch, model.num_classes, random_init=False, arch_config=_arch_config(model))
    staged = staged_from_torchvision(model.arch, tv)
    staged_keys = {id(t): k for k, t in staged.state_dict(keep_vars=True).items()}
    mapping: dict[str, str] = {}
    for tv_key, tensor in tv.state_dict(keep_vars=True).items():
        if id(tensor) not in staged_keys:  # pragma: no cover - a stager dropping a module
            raise ValueError(f"{model.arch}: torchvision key {tv_key!r} is in no stage")
        mapping[staged_keys[id(tensor)]] = tv_key
    unmatched = sorted(set(staged_keys.values()) - set(mapping))
    if unmatched:  # pragma: no cover - a stager adding stateful glue
        raise ValueError(f"{model.arch}: staged keys {unmatched[:5]} have no torchvision counterpart")
    own = set(model.state_dict())
    if own != set(mapping):
        raise ValueError(
            f"{model.arch}: the model's keys differ from a fresh {model.arch}'s "
            f"(e.g. {sorted(own ^ set(mapping))[:3]}); was it modified (e.g. LoRA surgery)?"
        )
    return mapping


def torchvision_state_dict(model: StagedModel) -> OrderedDict[str, Tensor]:
    """``model``'s weights keyed as its torchvision architecture expects (contiguous CPU
    copies, torchvision's key order): ``load_state_dict(..., strict=True)`` on the model
    :func:`torchvision_constructor` describes accepts it."""
    state = model.state_dict()
    return OrderedDict(
        (tv_key, state[key].detach().to("cpu", copy=True).contiguous())
        for key, tv_key in torchvision_key_map(model).items()
    )


def torchvision_description(model: StagedModel) -> dict[str, Any]:
    """:func:`torchvision_constructor` for ``model``'s architecture, classes and options."""
    return torchvision_constructor(model.arch, model.num_classes, arch_config=_arch_config(model))


def to_torchvision(model: StagedModel) -> nn.Module:
    """A plain torchvision model (CPU) holding ``model``'s weights, in ``model``'s train/eval mode."""
    with torch.device("meta"):
        tv = construct_from_description(torchvision_description(model))
    tv = tv.to_empty(device="cpu")
    tv.load_state_dict(torchvision_state_dict(model), strict=True)
    return tv.train(model.training)


# --------------------------------------------------------------------------------------
# ImageNet weights from the local torch hub cache
# --------------------------------------------------------------------------------------
_DENSENET_LEGACY_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)


def _imagenet_weights_enum(spec: ArchSpec):
    import torchvision.models

    if spec.imagenet_weights is None:
        raise BackboneWeightsError(
            f"Architecture {spec.name!r} has no ImageNet weights. Set `backbone.weights` in "
            f"{_PARAMS_FILE} to null (random initialisation) or to the path of an evotune "
            "backbone checkpoint, or pick an architecture that has them: "
            f"{', '.join(n for n, s in ARCHITECTURES.items() if s.imagenet_weights)}."
        )
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


def _load_imagenet_state_dict(
    spec: ArchSpec, torch_home: str | os.PathLike | None, allow_download: bool
) -> Mapping[str, Tensor]:
    weights = _imagenet_weights_enum(spec)
    path = imagenet_weights_path(spec.name, torch_home)
    if path.is_file():
        try:
            state_dict = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise BackboneWeightsError(
                f"ImageNet weights file for {spec.name!r} at {path} could not be read "
                f"({type(exc).__name__}: {exc}). It is probably truncated or corrupt: delete "
                f"it and fetch {weights.url} again."
            ) from exc
    elif allow_download:
        state_dict = torch.hub.load_state_dict_from_url(
            weights.url, model_dir=str(path.parent), map_location="cpu", progress=True, check_hash=True
        )
    else:
        raise BackboneWeightsError(
            f"ImageNet weights for {spec.name!r} ({spec.imagenet_weights}) are not in the local "
            f"torch hub cache: expected file {path}. Weights are not downloaded automatically "
            f"(this machine may be offline). On a machine with internet access download "
            f"{weights.url} and copy it to {path} (or set TORCH_HOME to a directory whose "
            f"hub/checkpoints/ holds it). Alternatively set `backbone.weights` in "
            f"{_PARAMS_FILE} to the path of an evotune backbone checkpoint "
            f"(`backbone.weights: <path to a checkpoint>`), or to null for random init."
        )
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


# --------------------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------------------
_RANDOM_WEIGHTS = {"none", "random", "scratch"}


def _empty_torchvision(arch: str, num_classes: int, arch_config: Mapping[str, Any] | None) -> nn.Module:
    """Torchvision model with uninitialised CPU storage, to be filled by a strict load."""
    with torch.device("meta"):
        model = _construct_torchvision(arch, num_classes, random_init=False, arch_config=arch_config)
    return model.to_empty(device="cpu")


def build_model(
    arch: str,
    num_classes: int,
    *,
    weights: str | os.PathLike | None = None,
    torch_home: str | os.PathLike | None = None,
    allow_download: bool = False,
) -> StagedModel:
    """Build a :class:`StagedModel` (on CPU, training mode).

    Args:
        arch: registry name (see :data:`ARCHITECTURES`).
        num_classes: output size of the head.
        weights: ``None`` (or ``"none"``/``"random"``): torchvision's random init.
            ``"imagenet"``: torchvision ImageNet weights from the local torch hub cache,
            then a fresh head for ``num_classes``. Any other value is read as the path of
            an evotune backbone checkpoint (see :func:`model_from_checkpoint`), whose arch
            must be ``arch``.
        torch_home: overrides ``TORCH_HOME`` for locating ImageNet weights.
        allow_download: with ``weights="imagenet"``, download a missing file with
            torchvision's normal mechanism instead of raising.

    Raises:
        UnknownArchitectureError: unknown ``arch``.
        BackboneWeightsError: weights missing, unreadable or not matching ``arch``.
    """
    spec = get_arch(arch)
    if int(num_classes) < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if weights is None or (isinstance(weights, str) and weights.strip().lower() in _RANDOM_WEIGHTS):
        tv_model = _construct_torchvision(spec.name, num_classes, random_init=True)
        return staged_from_torchvision(spec.name, tv_model)
    if isinstance(weights, str) and weights.strip().lower() == "imagenet":
        state_dict = _load_imagenet_state_dict(spec, torch_home, allow_download)
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
    if _ALIASES.get(_normalise_name(str(ckpt["arch"]))) != spec.name:
        raise BackboneWeightsError(
            f"Checkpoint {weights} holds a {ckpt['arch']!r} backbone but `backbone.arch` is "
            f"{spec.name!r}: set `backbone.arch` in {_PARAMS_FILE} to {ckpt['arch']!r} or "
            "point `backbone.weights` at a checkpoint of this architecture."
        )
    return model_from_checkpoint(ckpt, num_classes)


# --------------------------------------------------------------------------------------
# Introspection
# --------------------------------------------------------------------------------------
def block_parameter_names(model: StagedModel) -> list[list[str]]:
    """Per block, the names (as in ``model.named_parameters()``) of its parameters."""
    return [
        [f"stages.{i}.{name}" for name, _ in stage.named_parameters()]
        for i, stage in enumerate(model.stages)
    ]


def count_parameters(model: nn.Module, blocks: Iterable[int] | None = None) -> int:
    """Number of parameter elements of ``model`` (all, or of the given block indices)."""
    if blocks is None:
        return sum(p.numel() for p in model.parameters())
    if not isinstance(model, StagedModel):
        raise TypeError("blocks= needs a StagedModel")
    total = 0
    for i in sorted(set(blocks)):
        if not 0 <= i < model.num_blocks:
            raise IndexError(f"block index {i} out of range for {model.num_blocks} blocks")
        total += sum(p.numel() for p in model.stages[i].parameters())
    return total


# --------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------
_CKPT_KEYS = (
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


def _arch_config(model: StagedModel) -> dict[str, Any]:
    """Constructor options needed to rebuild ``model`` (beyond arch and num_classes)."""
    if isinstance(model.stages[0], _InceptionStem):
        return {"transform_input": model.stages[0].transform_input}
    return {}


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
) -> dict:
    """Describe ``model`` as a plain dict that ``torch.load(weights_only=True)`` reads.

    Keys: ``format`` (:data:`CHECKPOINT_FORMAT`), ``arch``, ``num_classes``,
    ``block_names``, ``input_size``, ``resize_size``, ``mean``, ``std``, ``source``
    (free text, e.g. ``"imagenet"`` or ``"source:cifar100"``), ``state_dict`` (CPU
    tensors, :class:`StagedModel` names), ``extra`` (plain values only) and
    ``arch_config`` (constructor options, e.g. Inception's ``transform_input``).
    """
    if not isinstance(model, StagedModel):
        raise TypeError(f"make_checkpoint needs a StagedModel, got {type(model).__name__}")
    if int(num_classes) != model.num_classes:
        raise ValueError(f"num_classes={num_classes} but the model's head has {model.num_classes} outputs")
    extra = dict(extra or {})
    _check_plain(extra, "extra")
    return {
        "format": CHECKPOINT_FORMAT,
        "arch": model.arch,
        "num_classes": int(num_classes),
        "block_names": list(model.block_names),
        "input_size": int(input_size),
        "resize_size": int(resize_size),
        "mean": [float(v) for v in mean],
        "std": [float(v) for v in std],
        "source": str(source),
        "state_dict": {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()},
        "extra": extra,
        "arch_config": _arch_config(model),
    }


def _validate_checkpoint(ckpt: Any, where: str) -> None:
    if not isinstance(ckpt, Mapping):
        raise BackboneWeightsError(
            f"{where} is not an evotune backbone checkpoint (it holds a {type(ckpt).__name__}, "
            "expected a dict written by evotune.backbones.make_checkpoint)."
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
    missing = [k for k in _CKPT_KEYS if k not in ckpt]
    if missing:
        raise BackboneWeightsError(f"{where} is missing checkpoint keys {missing}; it is incomplete.")
    if not isinstance(ckpt["state_dict"], Mapping):
        raise BackboneWeightsError(f"{where}: 'state_dict' is not a dict of tensors.")


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Read a checkpoint written with :func:`make_checkpoint` (on CPU, weights only).

    Raises:
        BackboneWeightsError: the file is missing, unreadable, or not such a checkpoint.
    """
    path = Path(os.path.expanduser(os.fspath(path)))
    fix = (
        f"Set `backbone.weights` in {_PARAMS_FILE} to an existing evotune backbone "
        "checkpoint (written by make_checkpoint, e.g. by source pre-training), to "
        "'imagenet', or to null for random initialisation."
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
    _validate_checkpoint(ckpt, f"Backbone checkpoint {path}")
    return ckpt


def model_from_checkpoint(ckpt: Mapping[str, Any], num_classes: int | None = None) -> StagedModel:
    """Rebuild the :class:`StagedModel` stored in ``ckpt`` (CPU, training mode).

    If ``num_classes`` is given and differs from ``ckpt["num_classes"]``, the head is
    replaced by a fresh Linear; every other block keeps the checkpoint's weights.

    Raises:
        BackboneWeightsError: unknown arch, block layout or state_dict not matching.
    """
    _validate_checkpoint(ckpt, "checkpoint")
    try:
        spec = get_arch(str(ckpt["arch"]))
    except UnknownArchitectureError as exc:
        raise BackboneWeightsError(f"checkpoint architecture {ckpt['arch']!r} is unknown: {exc}") from exc
    if list(ckpt["block_names"]) != list(spec.block_names):
        raise BackboneWeightsError(
            f"checkpoint block layout {list(ckpt['block_names'])} does not match {spec.name}'s "
            f"{list(spec.block_names)}; it was written by an incompatible evotune version."
        )
    tv_model = _empty_torchvision(spec.name, int(ckpt["num_classes"]), ckpt.get("arch_config"))
    model = staged_from_torchvision(spec.name, tv_model)
    try:
        model.load_state_dict(ckpt["state_dict"], strict=True)
    except RuntimeError as exc:
        raise BackboneWeightsError(
            f"checkpoint state_dict does not match architecture {spec.name!r} with "
            f"{ckpt['num_classes']} classes: {exc}"
        ) from exc
    model.train()
    if num_classes is not None and int(num_classes) != int(ckpt["num_classes"]):
        replace_head(model, int(num_classes))
    return model
