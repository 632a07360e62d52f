"""The architecture registry: which backbones exist, their blocks, input sizes and
normalisation, and how each family is built by torchvision and cut into stages.

Each registered architecture is an :class:`ArchSpec` (block names in forward order,
crop and resize sizes, ImageNet mean/std, the torchvision weights enum). Per family, a
*stager* cuts the torchvision model into the stages of a
:class:`~evotune.backbones.staged.StagedModel` (:func:`staged_from_torchvision`), and
:func:`torchvision_constructor` describes, as plain data, how torchvision builds the
bare model, which is what an exported model's metadata records. The way back, a staged
model's weights keyed as torchvision expects, is :func:`torchvision_state_dict` /
:func:`to_torchvision`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import EvotuneError
from .staged import StagedModel, _arch_config, _AuxStage, _InceptionStem, _ViTHead, _ViTStem

__all__ = [
    "ARCHITECTURES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ArchSpec",
    "BackboneWeightsError",
    "UnknownArchitectureError",
    "construct_from_description",
    "get_arch",
    "staged_from_torchvision",
    "to_torchvision",
    "torchvision_constructor",
    "torchvision_description",
    "torchvision_key_map",
    "torchvision_state_dict",
]

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

PARAMS_FILE = "conf/base/parameters_backbone.yml"


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
        fixed_input: the model takes ``input_size`` x ``input_size`` inputs only (a vision
            transformer's position embedding has one entry per patch); the parameter checks
            refuse another ``data.image.crop_size``.
    """

    name: str
    block_names: tuple[str, ...]
    input_size: int
    resize_size: int
    imagenet_weights: str | None
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"
    fixed_input: bool = False

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
#: Vision transformers: the encoder layers in this many groups of equal size (timm's
#: ``group_matcher`` puts each layer in a group of its own; four groups keep the genome of a
#: 12-layer ViT-B/16 as short as a ResNet's: 3 layers a block).
VIT_LAYER_GROUPS = 4
_VIT_BLOCKS = ("stem", *(f"encoder{i}" for i in range(1, VIT_LAYER_GROUPS + 1)), "head")
# Swin / ConvNeXt: as timm groups them, each stage after the first starts with its
# downsampling layer (torchvision keeps it as a separate entry of ``features``).
_SWIN_BLOCKS = ("stem", "stage1", "stage2", "stage3", "stage4", "head")
_CONVNEXT_BLOCKS = ("stem", "stage1", "stage2", "stage3", "stage4", "classifier")

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
        # Small, fast CPU vision transformer for the embedded offline task (no ImageNet
        # weights): 32x32 input, 4x4 patches, 4 layers of width 64 with 4 heads, MLP 128.
        ArchSpec("vit_tiny32", _VIT_BLOCKS, 32, 32, None, fixed_input=True),
        ArchSpec("vit_b_16", _VIT_BLOCKS, 224, 256, "ViT_B_16_Weights.IMAGENET1K_V1", fixed_input=True),
        ArchSpec("swin_t", _SWIN_BLOCKS, 224, 232, "Swin_T_Weights.IMAGENET1K_V1", interpolation="bicubic"),
        ArchSpec("convnext_tiny", _CONVNEXT_BLOCKS, 224, 236, "ConvNeXt_Tiny_Weights.IMAGENET1K_V1"),
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
    if isinstance(name, str) and name.strip().lower().startswith("timm/"):
        from .timm_models import timm_spec

        return timm_spec(name)
    key = _ALIASES.get(_normalise_name(name)) if isinstance(name, str) else None
    if key is None:
        raise UnknownArchitectureError(
            f"Unknown backbone architecture {name!r}. Valid names: "
            f"{', '.join(ARCHITECTURES)}, or timm/<model name> for a timm model. Set `backbone.arch` in "
            f"{PARAMS_FILE} to one of them."
        )
    return ARCHITECTURES[key]


# --------------------------------------------------------------------------------------
# Cutting torchvision models into stages
# --------------------------------------------------------------------------------------
def _seq(**modules: nn.Module) -> nn.Sequential:
    return nn.Sequential(OrderedDict(modules))


def _group(modules: nn.Sequential, indices: Sequence[int]) -> nn.Module:
    """One module of ``modules`` as is, or several as a Sequential keeping their keys."""
    items = list(modules.named_children())
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
    items = list(m.features.named_children())
    stages: list[nn.Module] = []
    current: list[tuple[str, nn.Module]] = []
    for key, module in items:
        current.append((key, module))
        if isinstance(module, nn.MaxPool2d):
            stages.append(nn.Sequential(OrderedDict(current)))
            current = []
    if current:  # trailing layers after the last pool (not in torchvision VGGs)
        stages[-1] = nn.Sequential(OrderedDict(list(stages[-1].named_children()) + current))
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


def _stage_vit(m: nn.Module) -> list[nn.Module]:
    layers = m.encoder.layers
    n = len(layers)
    if n % VIT_LAYER_GROUPS:
        raise ValueError(f"a vision transformer of {n} layers does not split into {VIT_LAYER_GROUPS} equal groups")
    size = n // VIT_LAYER_GROUPS
    groups = [list(range(g * size, (g + 1) * size)) for g in range(VIT_LAYER_GROUPS)]
    return [_ViTStem(m), *[_group(layers, g) for g in groups], _ViTHead(m.encoder.ln, m.heads)]


def _stage_swin_convnext(m: nn.Module) -> list[nn.Module]:
    # features: stem, stage1, down2, stage2, down3, stage3, down4, stage4
    f = m.features
    stages = [f[0], f[1], *[_group(f, [i, i + 1]) for i in range(2, len(f), 2)]]
    if hasattr(m, "head"):  # Swin: norm, NHWC -> NCHW, pool, flatten, head
        return [*stages, _seq(norm=m.norm, permute=m.permute, avgpool=m.avgpool, flatten=m.flatten, head=m.head)]
    return [*stages, _seq(avgpool=m.avgpool, classifier=m.classifier)]  # ConvNeXt


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
    # vit_tiny32 has no torchvision builder: VisionTransformer(image_size, patch_size,
    # num_layers, num_heads, hidden_dim, mlp_dim).
    "vit_tiny32": (("torchvision.models.vision_transformer.VisionTransformer", [32, 4, 4, 4, 64, 128]), _stage_vit),
    "vit_b_16": (("torchvision.models.vit_b_16", []), _stage_vit),
    "swin_t": (("torchvision.models.swin_t", []), _stage_swin_convnext),
    "convnext_tiny": (("torchvision.models.convnext_tiny", []), _stage_swin_convnext),
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
        "args": [dict(a) if isinstance(a, dict) else list(a) if isinstance(a, list) else a for a in args],
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


def _empty_torchvision(arch: str, num_classes: int, arch_config: Mapping[str, Any] | None) -> nn.Module:
    """Torchvision model with uninitialised CPU storage, to be filled by a strict load."""
    with torch.device("meta"):
        model = _construct_torchvision(arch, num_classes, random_init=False, arch_config=arch_config)
    return model.to_empty(device="cpu")


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
    if model.arch.startswith("timm/"):
        raise ValueError(
            f"{model.arch} is a timm model: there is no torchvision model to export it to (its state dict "
            "keys are timm's after the 'stages.<i>.' prefix)."
        )
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


