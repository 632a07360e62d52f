"""The staged model: a backbone as an ordered chain of stages, one per fine-tuning block.

BioTune-style selective fine-tuning cuts a backbone into ordered *blocks* (SPEC
section 5); a genome decides which blocks train and at what learning rate. The
partition is structural instead of a list of parameter-name prefixes:

* A :class:`StagedModel` holds ``stages: nn.ModuleList`` with **exactly one stage per
  block, in forward order**, and ``model(x)`` is literally ``stages[-1](...stages[0](x))``.
  Block ``i``'s parameters are ``model.stages[i].parameters()``; the classification
  head is always the last stage.
* The stages reference **the same module objects** as the torchvision model they were
  cut from (:func:`evotune.backbones.registry.staged_from_torchvision`), so weights
  loaded into the torchvision model before wrapping are kept, and the composition
  reproduces the torchvision eval-mode output exactly. The only modules the wrapper adds
  are parameter-free glue (``nn.Flatten``, the functional ReLU/pooling torchvision
  applies in ``forward``, Inception's ``transform_input`` step).
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
"""

from __future__ import annotations

import math
import operator
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["StagedModel", "count_parameters", "head_linears", "redraw_head", "replace_head"]


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


class _ViTStem(nn.Module):
    """Vision transformer stem (torchvision's ``VisionTransformer``): patch embedding, class
    token, position embedding and the encoder's input dropout, holding the model's own
    ``conv_proj``, ``class_token``, ``encoder.pos_embedding`` and ``encoder.dropout``.

    Same arithmetic as ``VisionTransformer._process_input`` + ``forward`` up to the encoder
    layers (bit-exact): ``(n, 3, s, s) -> (n, 1 + (s / patch)^2, hidden_dim)``.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.image_size = int(model.image_size)
        self.patch_size = int(model.patch_size)
        self.hidden_dim = int(model.hidden_dim)
        self.conv_proj = model.conv_proj
        self.class_token = model.class_token
        self.pos_embedding = model.encoder.pos_embedding
        self.dropout = model.encoder.dropout

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        n, _, h, w = x.shape
        p = self.patch_size
        if h != self.image_size or w != self.image_size:  # torchvision's check (there with torch's private _assert)
            raise ValueError(f"Wrong image size! Expected {self.image_size}x{self.image_size} but got {h}x{w}!")
        x = self.conv_proj(x).reshape(n, self.hidden_dim, (h // p) * (w // p)).permute(0, 2, 1)
        x = torch.cat([self.class_token.expand(n, -1, -1), x], dim=1)
        return self.dropout(x + self.pos_embedding)

    def extra_repr(self) -> str:
        return f"image_size={self.image_size}, patch_size={self.patch_size}"


class _ViTHead(nn.Module):
    """Vision transformer head: the encoder's final LayerNorm, the class token, the classifier."""

    def __init__(self, ln: nn.Module, heads: nn.Module) -> None:
        super().__init__()
        self.ln = ln
        self.heads = heads

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        return self.heads(self.ln(x)[:, 0])


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




def _arch_config(model: StagedModel) -> dict[str, Any]:
    """Constructor options needed to rebuild ``model`` (beyond arch and num_classes)."""
    if isinstance(model.stages[0], _InceptionStem):
        return {"transform_input": model.stages[0].transform_input}
    if hasattr(model, "timm_kwargs"):  # timm: the create_model options of a variant (e.g. img_size, depth)
        return {"timm_kwargs": dict(model.timm_kwargs)}
    return {}


