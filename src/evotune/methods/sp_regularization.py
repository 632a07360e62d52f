"""L2-SP and L1-SP (Li et al., ICML 2018): full fine-tuning pulled towards the pretrained weights.

Loss = cross-entropy + Omega(w), with, over the backbone blocks' parameters w
(every block but the head) and their pretrained values w0:

* L2-SP: Omega = alpha/2 * ||w - w0||_2^2 + beta/2 * ||w_head||_2^2
* L1-SP: Omega = alpha   * ||w - w0||_1   + beta/2 * ||w_head||_2^2

w0 is captured by the plan's ``prepare`` hook, which :meth:`Trainer.train` runs
right after restoring the pristine (pretrained) weights, so w0 is exactly the
pretrained backbone. The head term covers every parameter of the head block.
(For Inception-v3 the auxiliary classifier's fresh ``fc`` sits in the
``AuxLogits`` block and is pulled towards its initial values like the rest of
the backbone.)
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..backbones import StagedModel
from ..training import TrainingPlan
from .base import PlanMethod

KINDS = ("l2", "l1")


def sp_penalty(pairs: list[tuple[Tensor, Tensor]], head: list[Tensor], *, alpha: float, beta: float,
               kind: str = "l2") -> Tensor:
    """Omega(w) for (w, w0) ``pairs`` and the head's parameters (see the module docstring)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    ref = head[0] if head else pairs[0][0]
    total = torch.zeros((), device=ref.device, dtype=torch.float32)
    if pairs and alpha:
        if kind == "l2":
            drift = torch.stack([(w.float() - w0.float()).pow(2).sum() for w, w0 in pairs]).sum()
            total = total + 0.5 * alpha * drift
        else:
            drift = torch.stack([(w.float() - w0.float()).abs().sum() for w, w0 in pairs]).sum()
            total = total + alpha * drift
    if head and beta:
        total = total + 0.5 * beta * torch.stack([w.float().pow(2).sum() for w in head]).sum()
    return total


def _builder(kind: str):
    def build(model: StagedModel, base_lr: float, alpha: float, beta: float) -> TrainingPlan:
        if float(alpha) < 0 or float(beta) < 0:
            raise ValueError(f"compare.{kind}_sp.alpha and beta must be >= 0, got alpha={alpha}, beta={beta}")
        state: dict = {}

        def prepare(m: StagedModel) -> None:
            # called on the pristine model: these are the pretrained weights w0
            state["pairs"] = [(p, p.detach().clone()) for i, stage in enumerate(m.stages) if i != m.head_index
                              for p in stage.parameters()]
            state["head"] = list(m.stages[m.head_index].parameters())

        def penalty(m: StagedModel) -> Tensor:
            return sp_penalty(state["pairs"], state["head"], alpha=float(alpha), beta=float(beta), kind=kind)

        return TrainingPlan(block_lrs=[base_lr] * model.num_blocks, name=f"{kind}_sp", prepare=prepare,
                            penalty=penalty)

    return build


L2_SP = PlanMethod("l2_sp", "full fine-tuning + alpha/2 ||w - w0||^2 + beta/2 ||w_head||^2",
                   {"alpha": float, "beta": float}, _builder("l2"))
L1_SP = PlanMethod("l1_sp", "full fine-tuning + alpha ||w - w0||_1 + beta/2 ||w_head||^2",
                   {"alpha": float, "beta": float}, _builder("l1"))
