"""LoRA for convolutions: a frozen backbone plus trainable low-rank updates, and the head.

Every ``nn.Conv2d`` of the backbone blocks (not the head) with ``groups == 1``
is wrapped (:class:`LoRAConv2d`):

    y = conv(x) + (alpha / r) * B(A(x))

A is a conv ``in -> r`` with the layer's kernel size, stride, padding, dilation
and padding mode (no bias), B a 1x1 conv ``r -> out`` (no bias), initialised to
zero so the wrapped model starts as the pretrained one. A is initialised like a
fresh ``nn.Conv2d`` (Kaiming-uniform, a = sqrt(5)) from ``init_seed``.
Depthwise and grouped convolutions (``groups > 1``, e.g. MobileNet,
EfficientNet) are left unwrapped: a grouped low-rank update is not defined by
the recipe; none of the paper's four architectures has one.

Training: the original conv weights, every other backbone parameter and the
backbone's batch-norm statistics stay frozen (backbone blocks run in eval
mode); A, B and the head train at the base rate.

Surgery: the plan's ``prepare`` wraps the convs on the model the trainer holds
and returns the undo, which puts the original conv modules back (the trainer
calls it when the training ends; the model's state_dict keys are then the
originals). A model that already holds adapters is refused, so adapters never
stack. A trained state holding adapters is turned back into a plain state
of the original architecture by :func:`merge_lora_state_dict`: the update is
linear, so it folds into the conv weight exactly,
``W' = W + (alpha/r) * sum_k B[:, k] A[k]``.
"""

from __future__ import annotations

import logging
import math

import torch
from torch import Tensor, nn

from ..backbones import StagedModel
from ..training import TrainingPlan, Undo
from .base import PlanMethod

log = logging.getLogger(__name__)


class LoRAConv2d(nn.Module):
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
        with torch.no_grad():
            a = torch.empty(self.lora_A.weight.shape, dtype=torch.float32)
            nn.init.kaiming_uniform_(a, a=math.sqrt(5), generator=generator)
            self.lora_A.weight.copy_(a)
            self.lora_B.weight.zero_()

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        return self.base(x) + self.lora_scale * self.lora_B(self.lora_A(x))

    def extra_repr(self) -> str:
        return f"rank={self.rank}, scale={float(self.lora_scale):g}"


def eligible_convs(stage: nn.Module) -> list[tuple[nn.Module, str, nn.Conv2d]]:
    """(parent, attribute, conv) for every wrappable conv of ``stage`` (groups == 1)."""
    out = []
    for parent in stage.modules():
        if isinstance(parent, LoRAConv2d):
            continue
        for name, child in parent.named_children():
            if isinstance(child, nn.Conv2d) and child.groups == 1:
                out.append((parent, name, child))
    return out


def add_lora(model: StagedModel, rank: int, alpha: float, init_seed: int = 0) -> tuple[list[LoRAConv2d], Undo]:
    """Wrap the backbone's convs in place. Returns the wrappers and the undo that puts the
    original convs back; a model that already holds adapters is a ValueError (never stack them)."""
    if int(rank) < 1:
        raise ValueError(f"compare.lora.rank must be >= 1, got {rank}")
    if any(isinstance(m, LoRAConv2d) for m in model.modules()):
        raise ValueError(f"{model.arch} already holds LoRA adapters: undo that surgery before adding new ones")
    g = torch.Generator().manual_seed(int(init_seed))
    done: list[tuple[nn.Module, str, LoRAConv2d]] = []
    skipped = 0
    for i, stage in enumerate(model.stages):
        if i == model.head_index:
            continue
        skipped += sum(1 for m in stage.modules() if isinstance(m, nn.Conv2d) and m.groups != 1)
        for parent, name, conv in eligible_convs(stage):
            wrapper = LoRAConv2d(conv, rank, alpha, generator=g)
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


def merge_lora_state_dict(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A state with LoRA adapters as the state of the original architecture (adapters folded in, key order kept)."""
    prefixes = {k[: -len(".lora_scale")] for k in state if k.endswith(".lora_scale")}
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        head, sep, tail = key.rpartition(".")
        owner = head.rsplit(".", 1)[0] if "." in head else ""
        if key.endswith(".lora_scale") or owner in prefixes and head.endswith((".lora_A", ".lora_B")):
            continue
        if head.endswith(".base") and head[: -len(".base")] in prefixes:
            prefix = head[: -len(".base")]
            if tail == "weight":
                a = state[f"{prefix}.lora_A.weight"].float()
                b = state[f"{prefix}.lora_B.weight"].float()
                delta = torch.einsum("or,rikl->oikl", b[:, :, 0, 0], a) * state[f"{prefix}.lora_scale"].float()
                value = (value.float() + delta.to(value.device)).to(value.dtype)
            out[f"{prefix}.{tail}"] = value
            continue
        out[key] = value
    return out


def build(model: StagedModel, base_lr: float, rank: int = 8, alpha: float = 8.0, init_seed: int = 0) -> TrainingPlan:
    if int(rank) < 1:
        raise ValueError(f"compare.lora.rank must be >= 1, got {rank}")
    head = model.head_index
    has_conv = [i != head and bool(eligible_convs(stage)) for i, stage in enumerate(model.stages)]
    lrs: list[float | None] = [base_lr if (c or i == head) else None for i, c in enumerate(has_conv)]

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
                if isinstance(mod, LoRAConv2d):
                    adapters.update(id(p) for p in (*mod.lora_A.parameters(), *mod.lora_B.parameters()))
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
    "frozen backbone + low-rank conv updates (A: kxk in->r, B: 1x1 r->out, x alpha/r) + head",
    {"rank": int, "alpha": float, "init_seed": int},
    build,
    export_fn=merge_lora_state_dict,
)
