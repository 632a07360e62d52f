"""timm backbones: ``backbone.arch: timm/<model_name>``, cut into blocks by timm's own grouping.

timm is optional (``pip install -e '.[timm]'``); without it a ``timm/`` architecture is an
:class:`~evotune.backbones.registry.UnknownArchitectureError` saying how to install it.

Blocks
------
Every timm model describes its layer groups through ``group_matcher(coarse=True)``, the
grouping timm uses for layer-wise learning-rate decay: stem or patch embedding, each stage
(or each encoder layer of a ViT), and everything no pattern matches (the classifier and its
pooling / norm) as the last group. Each group is one block, in forward order. The model's
forward is traced with ``torch.fx`` (timm's own list of untraceable modules stays whole, as
does every module with parameters or buffers of its own and every module whose forward reads
``self.training``, so train and eval mode behave as in timm) and cut between the groups: a
stage is the piece of the traced forward between two cuts, holding the model's own modules
and parameters under their timm names (``stages.<i>.<timm name>``). A cut must carry one
tensor; a model whose forward does not cut that way is refused with a message saying so.
:func:`staged_from_timm` checks that the staged forward equals the timm forward.

Block names: ``stem`` for timm's stem group, ``head`` for the last group, else the group's
module paths without dots (``blocks3``, ``stages1``, ``layer2``), joined by ``+`` when a
group spans several (timm puts a ViT's final ``norm`` with its last block: ``blocks11+norm``).
A ViT's groups are its encoder layers one by one (14 blocks for ViT-B/16), as timm's coarse
grouping has them; the torchvision ``vit_b_16`` entry groups them by three instead.

Export
------
:func:`timm_state_dict` gives the weights back keyed as timm's own model (a staged key without its
``stages.<i>.`` prefix), so that ``timm.create_model(name, num_classes=K, **kwargs)`` loads them
strictly; :func:`timm_description` records that call and :func:`to_timm` builds the plain model
(``evotune.export``).

Weights
-------
``weights: imagenet`` reads the model's default pretrained weights from the Hugging Face hub cache
(``HF_HUB_CACHE``, by default ``~/.cache/huggingface/hub``), downloading them there through the hub
(``hf_hub_download``) on first use. Offline (``EVOTUNE_OFFLINE=1`` or ``HF_HUB_OFFLINE=1``, or a hub
that does not answer) :func:`timm_weights_problem` names the cache folder, the file to put there and
its URL. A timm weights file (``.safetensors``, ``.pth``, ``.bin``) can be given as a local path instead.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
import re
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, fx, nn

from .registry import PARAMS_FILE, ArchSpec, BackboneWeightsError, UnknownArchitectureError
from .staged import StagedModel

__all__ = ["TIMM_PREFIX", "build_timm", "is_timm", "staged_from_timm", "timm_description", "timm_from_description",
           "timm_spec", "timm_state_dict", "timm_weights_problem", "to_timm"]

TIMM_PREFIX = "timm/"
#: weights files a ``backbone.weights`` path may name for a timm model (loaded by timm)
TIMM_WEIGHT_SUFFIXES = (".safetensors", ".pth", ".bin")


def is_timm(arch: Any) -> bool:
    return isinstance(arch, str) and arch.strip().lower().startswith(TIMM_PREFIX)


def _timm():
    try:
        import timm
    except ImportError as exc:
        raise UnknownArchitectureError(
            "backbone.arch names a timm model but timm is not installed: install it with "
            "`pip install -e '.[timm]'` (or `pip install timm`), or set `backbone.arch` in "
            f"{PARAMS_FILE} to a torchvision architecture."
        ) from exc
    return timm


def _model_name(arch: str) -> str:
    return arch.strip()[len(TIMM_PREFIX):]


def _create(arch: str, num_classes: int, kwargs: Mapping[str, Any] | None, **extra) -> nn.Module:
    timm = _timm()
    name = _model_name(arch)
    if not timm.is_model(name):
        raise UnknownArchitectureError(
            f"Unknown timm model {name!r} (backbone.arch {arch!r}): `timm.list_models()` lists the valid "
            f"names. Set `backbone.arch` in {PARAMS_FILE} to timm/<one of them>."
        )
    return timm.create_model(name, num_classes=int(num_classes), **dict(kwargs or {}), **extra)


# --------------------------------------------------------------------------------------
# Groups and the cut forward
# --------------------------------------------------------------------------------------
def _groups(model: nn.Module) -> list[list[str]]:
    """Parameter names per coarse group of timm's ``group_matcher``, in group order."""
    from timm.models import group_parameters

    grouped = group_parameters(model, model.group_matcher(coarse=True))
    return [list(names) for _, names in sorted(grouped.items())]


def _group_name(names: list[str], index: int, last: int, stem_patterns: Any) -> str:
    if index == last:
        return "head"
    if index == 0 and stem_patterns is not None:
        return "stem"
    parts: list[str] = []
    for name in names:
        comps = name.split(".")
        numbered = len(comps) > 2 and comps[1].isdigit() and not comps[0][-1].isdigit()
        path = comps[0] + (comps[1] if numbered else "")  # blocks.3 -> blocks3, layer1.0 -> layer1
        if path not in parts:
            parts.append(path)
    return "+".join(parts)


def _block_names(model: nn.Module, groups: list[list[str]]) -> tuple[str, ...]:
    stem = model.group_matcher(coarse=True).get("stem")
    names = tuple(_group_name(g, i, len(groups) - 1, stem) for i, g in enumerate(groups))
    if len(set(names)) != len(names):  # pragma: no cover - a grouping naming two groups alike
        names = tuple(f"{n}_{i}" for i, n in enumerate(names))
    return names


def _reads_mode(module: nn.Module) -> bool:
    forward = type(module).forward
    try:
        return "self.training" in inspect.getsource(forward)
    except (OSError, TypeError):
        return True


class _Tracer(fx.Tracer):
    def __init__(self) -> None:
        from timm.models import get_notrace_functions, get_notrace_modules

        super().__init__(autowrap_functions=tuple(get_notrace_functions()))
        self._notrace = tuple(get_notrace_modules())

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:  # noqa: D102
        if qualname == "":
            return False
        own = next(m.parameters(recurse=False), None) is not None or next(m.buffers(recurse=False), None) is not None
        return own or isinstance(m, self._notrace) or _reads_mode(m) or super().is_leaf_module(m, qualname)


def _cut(model: nn.Module, groups: list[list[str]]) -> list[nn.Module]:
    """The model's traced forward, cut into one GraphModule per group (see the module docstring)."""
    group_of = {name: i for i, names in enumerate(groups) for name in names}
    tracer = _Tracer()
    params = list(inspect.signature(model.forward).parameters.values())[1:]  # options beyond the image: defaults
    graph = tracer.trace(model, concrete_args={p.name: p.default for p in params
                                                if p.default is not inspect.Parameter.empty})
    for extra in [n for n in graph.nodes if n.op == "placeholder"][1:]:  # the options fixed to their defaults:
        below, todo = [extra], [extra]                                     # drop fx's checks of those defaults
        while todo:
            for user in todo.pop().users:
                if user not in below:
                    below.append(user)
                    todo.append(user)
        if all(u in below for n in below for u in n.users) and all(u.op != "output" for u in below):
            for n in sorted(below, key=list(graph.nodes).index, reverse=True):
                graph.erase_node(n)
    nodes = [n for n in graph.nodes if n.op != "output"]

    def groups_used(node: fx.Node) -> list[int]:
        if node.op not in ("call_module", "get_attr"):
            return []
        t = str(node.target)
        return [g for name, g in group_of.items() if name == t or name.startswith(t + ".")]

    part: dict[fx.Node, int] = {}
    current = 0
    for node in nodes:
        used = groups_used(node)
        if used:
            if min(used) < current or (max(used) != min(used)):
                raise ValueError(f"module {node.target} is used out of timm's group order")
            current = min(used)
        part[node] = current
    stages: list[nn.Module] = []
    n_parts = len(groups)
    placeholders = [n for n in nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise ValueError(f"the traced forward takes {len(placeholders)} inputs, expected the image only")
    carried: fx.Node = placeholders[0]
    for k in range(n_parts):
        members = [n for n in nodes if part[n] == k and n.op != "placeholder"]
        if not members:
            raise ValueError(f"group {k} of timm's grouping computes nothing in the traced forward")
        g = fx.Graph()
        env: dict[fx.Node, fx.Node] = {carried: g.placeholder("x")}
        member_set = set(members)
        for node in members:
            for arg in node.all_input_nodes:
                if arg not in env and arg not in member_set:
                    if arg.op == "get_attr":  # a parameter read in this group: the stage holds it
                        env[arg] = g.node_copy(arg, env.__getitem__)
                    else:
                        raise ValueError(
                            f"the cut before group {k} carries more than one value ({arg.name} besides "
                            f"{carried.name})"
                        )
            env[node] = g.node_copy(node, env.__getitem__)
        later = [n for n in members if any(u not in member_set for u in n.users)]
        if k == n_parts - 1:
            out = [n for n in members if any(u.op == "output" for u in n.users)]
            if len(out) != 1:
                raise ValueError("the traced forward does not end in one output tensor")
            later = out
        if len(later) != 1:
            raise ValueError(f"the cut after group {k} carries {len(later)} values, expected one tensor")
        g.output(env[later[0]])
        stages.append(fx.GraphModule(model, g, class_name=f"TimmStage{k}"))
        carried = later[0]
    return stages


def staged_from_timm(arch: str, model: nn.Module, *, check_input: torch.Tensor | None = None) -> StagedModel:
    """Wrap a timm model as a :class:`StagedModel`, one stage per coarse group of its
    ``group_matcher`` (the stages hold the model's own modules and parameters).

    ``check_input``: a batch on which the staged eval-mode forward must equal the timm model's.

    Raises:
        UnknownArchitectureError: the model's forward does not cut into its groups.
    """
    groups = _groups(model)
    try:
        stages = _cut(model, groups)
    except Exception as exc:
        raise UnknownArchitectureError(
            f"{arch}: its forward cannot be cut into the blocks of timm's group_matcher ({exc}); "
            f"pick another model for `backbone.arch` in {PARAMS_FILE}."
        ) from exc
    staged = StagedModel(arch, _block_names(model, groups), stages)
    staged.train(model.training)
    if check_input is not None:
        was = model.training
        model.eval()
        with torch.no_grad():
            same = torch.allclose(staged(check_input), model(check_input), atol=1e-5, rtol=1e-4)
        model.train(was)
        staged.train(was)
        if not same:
            raise UnknownArchitectureError(f"{arch}: the staged forward differs from timm's; it cannot be used.")
    return staged


# --------------------------------------------------------------------------------------
# Spec and weights
# --------------------------------------------------------------------------------------
@functools.cache
def _spec(arch: str) -> ArchSpec:
    with torch.device("meta"):
        model = _create(arch, 1000, None)
    from timm.data import resolve_data_config

    cfg = model.pretrained_cfg
    data = resolve_data_config({}, model=model)  # the data config timm's own transforms use
    size = int(data["input_size"][-1])
    crop_pct = float(data.get("crop_pct") or 1.0)
    interpolation = data.get("interpolation") or "bilinear"
    return ArchSpec(
        name=arch,
        block_names=_block_names(model, _groups(model)),
        input_size=size,
        resize_size=int(size / crop_pct),
        imagenet_weights=cfg.get("hf_hub_id") or None,
        mean=tuple(float(v) for v in data["mean"]),
        std=tuple(float(v) for v in data["std"]),
        interpolation=interpolation if interpolation in ("bilinear", "bicubic") else "bilinear",
        fixed_input=bool(cfg.get("fixed_input_size", False)),
    )


def timm_spec(arch: str) -> ArchSpec:
    """The :class:`ArchSpec` of ``timm/<model_name>`` (blocks, input size, normalisation of its
    default pretrained weights; ``imagenet_weights`` is their Hugging Face hub id)."""
    return _spec(TIMM_PREFIX + _model_name(arch))


def _hf_cache(hf_cache: str | os.PathLike | None) -> Path:
    if hf_cache is not None:
        return Path(os.path.expanduser(os.fspath(hf_cache)))
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


_HF_FILES = ("model.safetensors", "pytorch_model.bin")


def timm_weights_file(arch: str, hf_cache: str | os.PathLike | None = None) -> Path | None:
    """The cached weights file of ``arch``'s default pretrained weights, or None (file system only)."""
    from huggingface_hub import try_to_load_from_cache

    spec = timm_spec(arch)
    if spec.imagenet_weights is None:
        return None
    for filename in _HF_FILES:
        found = try_to_load_from_cache(spec.imagenet_weights, filename, cache_dir=_hf_cache(hf_cache))
        if isinstance(found, str):
            return Path(found)
    return None


def timm_weights_problem(arch: str, hf_cache: str | os.PathLike | None = None) -> str | None:
    """The one message saying why ``arch``'s pretrained weights cannot be used here, or None (cached, or
    downloadable: the Hugging Face hub answers and the run is not switched offline)."""
    from huggingface_hub import hf_hub_url

    from ..downloads import download_problem

    spec = timm_spec(arch)
    if spec.imagenet_weights is None:
        return (f"timm model {arch!r} has no pretrained weights on the Hugging Face hub: set `backbone.weights` "
                f"in {PARAMS_FILE} to none, to a checkpoint, or to a local timm weights file.")
    if timm_weights_file(arch, hf_cache) is not None:
        return None
    repo = spec.imagenet_weights
    folder = _hf_cache(hf_cache) / ("models--" + repo.replace("/", "--"))
    return download_problem(
        f"Pretrained weights of {arch} (the Hugging Face repo {repo})", hf_hub_url(repo, _HF_FILES[0]),
        f"{folder}/snapshots/<revision>/{_HF_FILES[0]} in the local hub cache",
        f" (HF_HUB_CACHE={os.environ.get('HF_HUB_CACHE', 'unset')}): `hf download {repo} {_HF_FILES[0]}` there "
        f"fetches it; then copy its cache folder {folder.name} into {_hf_cache(hf_cache)} (or set HF_HUB_CACHE to a "
        f"cache holding it), or set `backbone.weights` in {PARAMS_FILE} to the path of that {_HF_FILES[0]} file, "
        "of an evotune backbone checkpoint, or to none for random initialisation")


def _download_timm_weights(arch: str, hf_cache: str | os.PathLike | None) -> Path:
    """Download ``arch``'s default pretrained weights through the Hugging Face hub into its cache."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    repo = timm_spec(arch).imagenet_weights
    last: Exception | None = None
    for filename in _HF_FILES:
        try:
            return Path(hf_hub_download(repo, filename, cache_dir=_hf_cache(hf_cache)))
        except EntryNotFoundError as exc:
            last = exc
        except Exception as exc:  # noqa: BLE001 - network, offline, gated repo: one message
            raise BackboneWeightsError(
                f"Pretrained weights of {arch}: the download of {filename} from the Hugging Face repo {repo} failed "
                f"({type(exc).__name__}: {exc}). Run again when the hub answers, or see the offline advice of "
                f"`kedro run` with EVOTUNE_OFFLINE=1.") from exc
    raise BackboneWeightsError(f"Pretrained weights of {arch}: the Hugging Face repo {repo} has none of "
                               f"{', '.join(_HF_FILES)} ({last}).")


def _check_size(model: nn.Module) -> torch.Tensor:
    size = model.pretrained_cfg.get("input_size", (3, 224, 224))
    kwargs_size = getattr(getattr(model, "patch_embed", None), "img_size", None)
    side = int(kwargs_size[-1]) if kwargs_size else int(size[-1])
    return torch.randn(1, 3, side, side, generator=torch.Generator().manual_seed(0))


def build_timm(
    arch: str,
    num_classes: int,
    *,
    weights: str | os.PathLike | None = None,
    hf_cache: str | os.PathLike | None = None,
    timm_kwargs: Mapping[str, Any] | None = None,
    check: bool = True,
) -> StagedModel:
    """A :class:`StagedModel` of ``timm/<model_name>`` (CPU, training mode), its head for ``num_classes``.

    ``weights``: None / ``"none"``: timm's random init; ``"imagenet"``: the default pretrained weights
    from the Hugging Face hub cache (``hf_cache`` or ``HF_HUB_CACHE``), downloaded there when missing; a path ending in
    ``.safetensors`` / ``.pth`` / ``.bin``: a timm weights file. ``timm_kwargs`` go to
    ``timm.create_model`` (e.g. ``img_size``, ``depth`` for a small variant).
    """
    arch = TIMM_PREFIX + _model_name(arch)
    kind = "none" if weights is None else os.fspath(weights)
    if kind.strip().lower() in ("none", "random", "scratch"):
        model = _create(arch, num_classes, timm_kwargs)
    else:
        if kind.strip().lower() == "imagenet":
            path = timm_weights_file(arch, hf_cache)
            if path is None:
                problem = timm_weights_problem(arch, hf_cache)
                if problem is not None:
                    raise BackboneWeightsError(problem)
                path = _download_timm_weights(arch, hf_cache)
        else:
            path = Path(os.path.expanduser(kind))
            if not path.is_file():
                raise BackboneWeightsError(f"timm weights file not found: {path}. Set `backbone.weights` in {PARAMS_FILE}.")
        try:
            model = _create(arch, num_classes, timm_kwargs, pretrained=True,
                            pretrained_cfg_overlay={"file": str(path), "hf_hub_id": None, "url": None})
        except Exception as exc:
            raise BackboneWeightsError(f"timm could not load {path} into {arch}: {type(exc).__name__}: {exc}") from exc
    model.train()
    staged = staged_from_timm(arch, model, check_input=_check_size(model) if check else None)
    staged.timm_kwargs = dict(timm_kwargs or {})
    return staged


# --------------------------------------------------------------------------------------
# Export: back to a plain timm model
# --------------------------------------------------------------------------------------
_STAGE_KEY = re.compile(r"stages\.(\d+)\.(.+)")


def timm_description(model: StagedModel) -> dict[str, Any]:
    """How to build ``model``'s bare timm model, as plain JSON-ready values:
    ``{"model_name", "num_classes", "kwargs" (the create_model options of a variant), "python"
    (the one-line expression)}``; :func:`timm_from_description` builds it."""
    name = _model_name(model.arch)
    kwargs = {str(k): v for k, v in dict(getattr(model, "timm_kwargs", None) or {}).items()}
    shown = [json.dumps(name), f"num_classes={int(model.num_classes)}"] + [f"{k}={v!r}" for k, v in kwargs.items()]
    return {"model_name": name, "num_classes": int(model.num_classes), "kwargs": kwargs,
            "python": f"timm.create_model({', '.join(shown)})"}


def timm_from_description(description: Mapping[str, Any]) -> nn.Module:
    """The timm model a :func:`timm_description` names (timm's random init, CPU, training mode;
    on the current default device: wrap in ``torch.device("meta")`` to skip allocation)."""
    return _create(TIMM_PREFIX + str(description["model_name"]), int(description["num_classes"]),
                   description.get("kwargs"))


def timm_state_dict(model: StagedModel) -> OrderedDict[str, Tensor]:
    """``model``'s weights keyed as its timm model expects (contiguous CPU copies, in timm's key
    order): ``timm.create_model(name, num_classes=K, **kwargs).load_state_dict(..., strict=True)``
    accepts it. A stage holds the timm model's modules under their timm names, so a key is the
    staged key without its ``stages.<i>.`` prefix; the keys and shapes are checked against a
    fresh timm model of the same name, classes and options."""
    state = model.state_dict()
    renamed: dict[str, str] = {}
    for key in state:
        m = _STAGE_KEY.fullmatch(key)
        if m is None or m.group(2) in renamed:
            raise ValueError(f"{model.arch}: the staged key {key!r} has no unique timm counterpart")
        renamed[m.group(2)] = key
    with torch.device("meta"):
        fresh = timm_from_description(timm_description(model)).state_dict()
    differ = sorted(set(fresh) ^ set(renamed))
    if differ:
        raise ValueError(f"{model.arch}: the model's keys differ from a fresh timm model's (e.g. {differ[:3]}); "
                         "was it modified (e.g. LoRA surgery)?")
    out: OrderedDict[str, Tensor] = OrderedDict()
    for key, ref in fresh.items():
        t = state[renamed[key]]
        if tuple(t.shape) != tuple(ref.shape):
            raise ValueError(f"{model.arch}: {key} has shape {tuple(t.shape)}, a fresh timm model's {tuple(ref.shape)}")
        out[key] = t.detach().to("cpu", copy=True).contiguous()
    return out


def to_timm(model: StagedModel) -> nn.Module:
    """A plain timm model (CPU) holding ``model``'s weights, in ``model``'s train/eval mode."""
    plain = timm_from_description(timm_description(model))
    plain.load_state_dict(timm_state_dict(model), strict=True)
    return plain.train(model.training)
