"""LoRA: a frozen backbone plus trainable low-rank updates, and the head.

In the backbone blocks (not the head) every layer below is wrapped, its update initialised
to zero so the wrapped model starts as the pretrained one, A drawn like a fresh layer
(Kaiming-uniform, a = sqrt(5)) from ``init_seed``:

* ``nn.Conv2d`` with ``groups == 1`` (:class:`LoRAConv2d`): ``y = conv(x) + (alpha / r) * B(A(x))``,
  A a conv ``in -> r`` with the layer's kernel size, stride, padding, dilation and padding
  mode (no bias), B a 1x1 conv ``r -> out`` (no bias). Depthwise and grouped convolutions
  (``groups > 1``, e.g. MobileNet, EfficientNet, ConvNeXt) are left unwrapped: a grouped
  low-rank update is not defined by the recipe; none of the paper's four architectures has one.
* ``nn.Linear`` (:class:`LoRALinear`), e.g. the MLP layers of transformer blocks and
  ConvNeXt's pointwise layers: ``y = linear(x) + (alpha / r) * B(A(x))``, A ``in -> r``, B ``r -> out``.
* ``nn.MultiheadAttention`` (torchvision's ViTs, :class:`LoRAMultiheadAttention`): its input
  projection (query, key and value together, ``in_proj_weight``) and its output projection
  each get ``W + (alpha / r) * B A``, and the attention runs with those weights.
  Linear layers whose weights their attention module reads directly (``out_proj`` of
  ``nn.MultiheadAttention``, and ``qkv``/``proj`` of torchvision's Swin
  ``ShiftedWindowAttention``) are not wrapped on their own: Swin's attention projections
  stay without adapters, its MLP layers get them.

Training: the original weights, every other backbone parameter and the backbone's
batch-norm statistics stay frozen (backbone blocks run in eval mode); A, B and the head
train at the base rate.

Surgery: the plan's ``prepare`` wraps the layers on the model the trainer holds and
returns the undo, which puts the original modules back (the trainer calls it when the
training ends; the model's state_dict keys are then the originals). A model that already
holds adapters is refused, so adapters never stack. A trained state holding adapters is
turned back into a plain state of the original architecture by
:func:`merge_lora_state_dict`: the update is linear, so it folds into the weight exactly,
``W' = W + (alpha/r) * sum_k B[:, k] A[k]``.
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.swin_transformer import ShiftedWindowAttention

from ..backbones import StagedModel, head_linears
from ..training import TrainingPlan, Undo
from .base import PlanMethod

log = logging.getLogger(__name__)


def _init_pair(a: Tensor, b: Tensor, generator: torch.Generator | None) -> None:
    """A as a fresh layer's weight (Kaiming-uniform, a = sqrt(5), from ``generator``), B zero."""
    with torch.no_grad():
        draw = torch.empty(a.shape, dtype=torch.float32)
        nn.init.kaiming_uniform_(draw, a=math.sqrt(5), generator=generator)
        a.copy_(draw)
        b.zero_()


class _LoRA(nn.Module):
    """A wrapped layer: ``base`` (frozen) and its adapters (every parameter not in ``base``)."""

    base: nn.Module

    def adapter_parameters(self) -> list[nn.Parameter]:
        own = {id(p) for p in self.base.parameters()}
        return [p for p in self.parameters() if id(p) not in own]


class LoRAConv2d(_LoRA):
    """A frozen ``base`` conv plus a trainable low-rank update (see the module docstring)."""

    def __init__(self, base: nn.Conv2d, rank: int, alpha: float, generator: torch.Generator | None = None) -> None:
        super().__init__()
        if base.groups != 1:
            raise ValueError("LoRAConv2d does not support grouped / depthwise convolutions")
        self.base = base
        self.rank = int(rank)
        self.lora_A = nn.Conv2d(base.in_channels, self.rank, base.kernel_size, stride=base.stride,
                                padding=base.padding, dilation=base.dilation, bias=False,
                                padding_mode=base.padding_mode)
        self.lora_B = nn.Conv2d(self.rank, base.out_channels, 1, bias=False)
        w = base.weight
        self.register_buffer("lora_scale", torch.tensor(float(alpha) / self.rank, device=w.device))
        self.lora_A.to(device=w.device, dtype=w.dtype)
        self.lora_B.to(device=w.device, dtype=w.dtype)
        _init_pair(self.lora_A.weight, self.lora_B.weight, generator)

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        return self.base(x) + self.lora_scale * self.lora_B(self.lora_A(x))

    def extra_repr(self) -> str:
        return f"rank={self.rank}, scale={float(self.lora_scale):g}"


class LoRALinear(_LoRA):
    """A frozen ``base`` Linear plus a trainable low-rank update (see the module docstring)."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.base = base
        self.rank = int(rank)
        w = base.weight
        self.lora_A = nn.Linear(base.in_features, self.rank, bias=False, device=w.device, dtype=w.dtype)
        self.lora_B = nn.Linear(self.rank, base.out_features, bias=False, device=w.device, dtype=w.dtype)
        self.register_buffer("lora_scale", torch.tensor(float(alpha) / self.rank, device=w.device))
        _init_pair(self.lora_A.weight, self.lora_B.weight, generator)

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        return self.base(x) + self.lora_scale * self.lora_B(self.lora_A(x))

    def extra_repr(self) -> str:
        return f"rank={self.rank}, scale={float(self.lora_scale):g}"


class LoRAMultiheadAttention(_LoRA):
    """A frozen ``nn.MultiheadAttention`` whose input and output projections carry low-rank
    updates (``lora_A``/``lora_B``: ``in_proj_weight``; ``lora_out_A``/``lora_out_B``:
    ``out_proj.weight``); called like the module it wraps."""

    def __init__(self, base: nn.MultiheadAttention, rank: int, alpha: float,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        if base.in_proj_weight is None:  # torch packs q, k, v in one weight iff kdim == vdim == embed_dim
            raise ValueError("LoRAMultiheadAttention needs one input projection (kdim == vdim == embed_dim)")
        self.base = base
        self.rank = int(rank)
        e, w = base.embed_dim, base.in_proj_weight
        kw = dict(bias=False, device=w.device, dtype=w.dtype)
        self.lora_A, self.lora_B = nn.Linear(e, self.rank, **kw), nn.Linear(self.rank, 3 * e, **kw)
        self.lora_out_A, self.lora_out_B = nn.Linear(e, self.rank, **kw), nn.Linear(self.rank, e, **kw)
        self.register_buffer("lora_scale", torch.tensor(float(alpha) / self.rank, device=w.device))
        _init_pair(self.lora_A.weight, self.lora_B.weight, generator)
        _init_pair(self.lora_out_A.weight, self.lora_out_B.weight, generator)

    @property
    def batch_first(self) -> bool:
        return self.base.batch_first

    def forward(self, query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Tensor | None = None,
                need_weights: bool = True, attn_mask: Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[Tensor, Tensor | None]:  # noqa: D102
        b = self.base
        if b.batch_first:
            query, key, value = (t.transpose(1, 0) for t in (query, key, value))
        in_w = b.in_proj_weight + self.lora_scale * (self.lora_B.weight @ self.lora_A.weight)
        out_w = b.out_proj.weight + self.lora_scale * (self.lora_out_B.weight @ self.lora_out_A.weight)
        out, weights = F.multi_head_attention_forward(
            query, key, value, b.embed_dim, b.num_heads, in_w, b.in_proj_bias, b.bias_k, b.bias_v,
            b.add_zero_attn, b.dropout, out_w, b.out_proj.bias, training=self.training,
            key_padding_mask=key_padding_mask, need_weights=need_weights, attn_mask=attn_mask,
            average_attn_weights=average_attn_weights, is_causal=is_causal)
        return (out.transpose(1, 0) if b.batch_first else out), weights

    def extra_repr(self) -> str:
        return f"rank={self.rank}, scale={float(self.lora_scale):g}"


#: modules that read their Linear children's weights directly (their Linears cannot be wrapped alone)
_READS_LINEAR_WEIGHTS = (nn.MultiheadAttention, ShiftedWindowAttention)


def _wrapper(module: nn.Module, parent: nn.Module) -> type[_LoRA] | None:
    if isinstance(module, nn.Conv2d) and module.groups == 1:
        return LoRAConv2d
    if isinstance(module, nn.Linear) and not isinstance(parent, _READS_LINEAR_WEIGHTS):
        return LoRALinear
    if isinstance(module, nn.MultiheadAttention) and module.in_proj_weight is not None:
        return LoRAMultiheadAttention
    return None


def eligible_layers(stage: nn.Module) -> list[tuple[nn.Module, str, nn.Module]]:
    """(parent, attribute, layer) for every layer of ``stage`` that gets an adapter (see the module docstring)."""
    out = []
    for parent in stage.modules():
        if isinstance(parent, _LoRA):
            continue
        for name, child in parent.named_children():
            if _wrapper(child, parent) is not None:
                out.append((parent, name, child))
    return out


def add_lora(model: StagedModel, rank: int, alpha: float, init_seed: int = 0) -> tuple[list[_LoRA], Undo]:
    """Wrap the backbone's layers in place. Returns the wrappers and the undo that puts the
    original layers back; a model that already holds adapters is a ValueError (never stack them)."""
    if int(rank) < 1:
        raise ValueError(f"compare.lora.rank must be >= 1, got {rank}")
    if any(isinstance(m, _LoRA) for m in model.modules()):
        raise ValueError(f"{model.arch} already holds LoRA adapters: undo that surgery before adding new ones")
    g = torch.Generator().manual_seed(int(init_seed))
    classifiers = {id(lin) for lin in head_linears(model)}  # Inception's aux fc: a classifier, trained or not
    done: list[tuple[nn.Module, str, _LoRA]] = []
    skipped = 0
    for i, stage in enumerate(model.stages):
        if i == model.head_index:
            continue
        skipped += sum(1 for m in stage.modules() if isinstance(m, nn.Conv2d) and m.groups != 1)
        for parent, name, layer in eligible_layers(stage):
            if id(layer) in classifiers:
                continue
            wrapper = _wrapper(layer, parent)(layer, rank, alpha, generator=g)
            setattr(parent, name, wrapper)
            done.append((parent, name, wrapper))
    if skipped:
        log.info("lora: %d grouped/depthwise conv(s) left without an adapter", skipped)

    wrappers = [w for _, _, w in done]

    def undo() -> None:
        for parent, name, wrapper in reversed(done):
            setattr(parent, name, wrapper.base)
        done.clear()

    return wrappers, undo


#: per wrapped parameter of ``base`` (the state-dict tail after ``base.``): its adapter pair
_MERGED = {"weight": ("lora_A", "lora_B"), "in_proj_weight": ("lora_A", "lora_B"),
           "out_proj.weight": ("lora_out_A", "lora_out_B")}


def merge_lora_state_dict(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A state with LoRA adapters as the state of the original architecture (adapters folded in, key order kept)."""
    prefixes = {k[: -len(".lora_scale")] for k in state if k.endswith(".lora_scale")}
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        parts = key.split(".")
        prefix = next((p for p in (".".join(parts[:i]) for i in range(len(parts) - 1, 0, -1)) if p in prefixes), None)
        if prefix is None:
            out[key] = value
            continue
        rest = key[len(prefix) + 1:]
        if not rest.startswith("base."):
            continue  # the adapters and their scale
        tail = rest[len("base."):]
        pair = _MERGED.get(tail)
        if pair is not None and f"{prefix}.{pair[0]}.weight" in state:
            a = state[f"{prefix}.{pair[0]}.weight"].float()
            b = state[f"{prefix}.{pair[1]}.weight"].float()
            delta = torch.einsum("or,r...->o...", b.reshape(b.shape[0], b.shape[1]), a)
            value = (value.float() + delta.to(value.device) * state[f"{prefix}.lora_scale"].float()).to(value.dtype)
        out[f"{prefix}.{tail}"] = value
    return out


def build(model: StagedModel, base_lr: float, rank: int = 8, alpha: float = 8.0, init_seed: int = 0) -> TrainingPlan:
    if int(rank) < 1:
        raise ValueError(f"compare.lora.rank must be >= 1, got {rank}")
    head = model.head_index
    has_adapter = [i != head and bool(eligible_layers(stage)) for i, stage in enumerate(model.stages)]
    lrs: list[float | None] = [base_lr if (c or i == head) else None for i, c in enumerate(has_adapter)]

    def prepare(m: StagedModel) -> Undo:
        return add_lora(m, int(rank), float(alpha), int(init_seed))[1]

    def param_groups(m: StagedModel, block_lrs) -> list[dict]:
        # apply_freezing switched whole blocks on; keep only the adapters of backbone blocks trainable
        groups = []
        for i, stage in enumerate(m.stages):
            if block_lrs[i] is None:
                continue
            if i == m.head_index:
                groups.append({"params": [p for p in stage.parameters()], "lr": block_lrs[i], "block": i})
                continue
            adapters = set()
            for mod in stage.modules():
                if isinstance(mod, _LoRA):
                    adapters.update(id(p) for p in mod.adapter_parameters())
            params = []
            for p in stage.parameters():
                if id(p) in adapters:
                    params.append(p)
                else:
                    p.requires_grad_(False)
            if params:
                groups.append({"params": params, "lr": block_lrs[i], "block": i})
        return groups

    return TrainingPlan(
        block_lrs=lrs,
        name=f"lora[r={int(rank)}]",
        prepare=prepare,
        param_groups=param_groups,
        eval_mode_blocks=frozenset(i for i in range(model.num_blocks) if i != head),
    )


METHOD = PlanMethod(
    "lora",
    "frozen backbone + low-rank updates of convs, linears and attention projections (x alpha/r) + head",
    {"rank": int, "alpha": float, "init_seed": int},
    build,
    export_fn=merge_lora_state_dict,
)
