"""Auto-RGN (Lee et al., ICLR 2023): per-tensor learning rates from relative gradient norms.

Every block is trained. At the start of each epoch, on the first ``batches``
(5, as the authors) training batches of that epoch's order, for every parameter
tensor w: RGN(w) = ||grad w|| / ||w||, averaged over the batches; the ratios are
normalised by their maximum and the tensor's learning rate is set to
``base_lr * ratio`` (times the cosine schedule's current factor, so the
schedule still applies). The measurement leaves the model as it found it:
gradients are taken with ``torch.autograd.grad`` (``.grad`` untouched) and the
buffers (batch-norm running statistics) are restored afterwards.

Normalisation tensors (batch/group/layer/instance norm weights and biases) are
left out of the measurement, as the authors do. ``norm_layers`` decides what
happens to them: ``frozen`` (default, as in the authors' code, where they are
not given to the optimizer) or ``base_lr`` (trained at the scheduled base
rate). Their running statistics update as in any trained block.

The schedule factor is per training: the trainer calls the plan's
``on_train_start`` with each training's new optimizer, which starts it afresh.

Difference from the authors' code: they rebuild the Adam optimizer every epoch
(its moments restart); here the lrs are set in place and Adam keeps its
moments unless ``reset_optimizer_state: true``.
"""

from __future__ import annotations

import itertools
import logging

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones import StagedModel
from ..training import TrainingPlan
from .base import PlanMethod

log = logging.getLogger(__name__)

NORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.GroupNorm, nn.LayerNorm,
              nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)
NORM_POLICIES = ("frozen", "base_lr")


def norm_parameter_ids(model: nn.Module) -> set[int]:
    """ids of the parameters of normalisation layers."""
    return {id(p) for m in model.modules() if isinstance(m, NORM_TYPES) for p in m.parameters(recurse=False)}


def relative_gradient_norms(model: StagedModel, params: list[torch.Tensor], batches, n_batches: int,
                            aux_loss_weight: float = 0.4) -> torch.Tensor:
    """Mean over the first ``n_batches`` of ``batches`` of ||grad p|| / ||p|| for each tensor of ``params``.

    ``batches`` yields ``(x, y, start_stage)`` as :meth:`Trainer.train`'s batch iterator does.
    """
    sums: torch.Tensor | None = None
    seen = 0
    for x, y, s in itertools.islice(batches, n_batches):
        logits = model.forward_from(s, x)
        loss = F.cross_entropy(logits.float(), y)
        for aux in model.aux_logits:
            loss = loss + aux_loss_weight * F.cross_entropy(aux.float(), y)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        with torch.no_grad():  # on the device, one transfer per batch
            ratios = torch.stack([
                torch.zeros((), device=p.device) if g is None
                else g.float().norm() / p.float().norm().clamp_min(1e-12)
                for p, g in zip(params, grads)
            ]) if params else torch.zeros(0)
        ratios = ratios.to("cpu", torch.float64)  # summed in float64 on the CPU (Apple's MPS has no float64)
        sums = ratios if sums is None else sums + ratios
        seen += 1
    if seen == 0:
        raise ValueError("auto_rgn: the training data yielded no batch to measure gradient norms on")
    return sums / seen


def build(model: StagedModel, base_lr: float, batches: int = 5, norm_layers: str = "frozen",
          reset_optimizer_state: bool = False, aux_loss_weight: float = 0.4) -> TrainingPlan:
    if norm_layers not in NORM_POLICIES:
        raise ValueError(f"compare.auto_rgn.norm_layers must be one of {NORM_POLICIES}, got {norm_layers!r}")
    if int(batches) < 1:
        raise ValueError(f"compare.auto_rgn.batches must be >= 1, got {batches}")

    def param_groups(m: StagedModel, block_lrs) -> list[dict]:
        norms = norm_parameter_ids(m)
        groups = []
        for i, stage in enumerate(m.stages):
            if block_lrs[i] is None:
                continue
            for name, p in stage.named_parameters():
                if not p.requires_grad:
                    continue
                if id(p) in norms:
                    if norm_layers == "frozen":
                        p.requires_grad_(False)
                        continue
                    groups.append({"params": [p], "lr": base_lr, "block": i, "name": f"stages.{i}.{name}",
                                   "rgn": False})
                else:
                    groups.append({"params": [p], "lr": base_lr, "block": i, "name": f"stages.{i}.{name}",
                                   "rgn": True})
        return groups

    state: dict = {}  # of the current training, set by on_train_start

    def on_train_start(m: StagedModel, optimizer: torch.optim.Optimizer) -> None:
        state.clear()
        state.update(optimizer=optimizer, factor=1.0, assigned=None)

    def on_epoch_start(m: StagedModel, optimizer: torch.optim.Optimizer, batches_factory) -> None:
        groups = [g for g in optimizer.param_groups if g.get("rgn")]
        if not groups:
            return
        if state.get("optimizer") is not optimizer:
            raise RuntimeError("auto_rgn: on_train_start was not called for this training's optimizer")
        if state["assigned"] is not None:
            # the scheduler has multiplied every lr by this epoch's cosine step since we set them
            k = max(range(len(groups)), key=lambda j: state["assigned"][j])
            if state["assigned"][k] > 0:
                state["factor"] *= groups[k]["lr"] / state["assigned"][k]
        params = [g["params"][0] for g in groups]
        buffers = {name: b.detach().clone() for name, b in m.named_buffers()}
        try:
            rgn = relative_gradient_norms(m, params, batches_factory(), int(batches), aux_loss_weight)
        finally:
            with torch.no_grad():
                for name, b in m.named_buffers():
                    b.copy_(buffers[name])
        top = float(rgn.max()) if len(rgn) else 0.0
        ratios = (rgn / top) if top > 0 else torch.ones_like(rgn)
        assigned = []
        for g, r in zip(groups, ratios.tolist()):
            g["lr"] = base_lr * r * state["factor"]
            g["rgn_ratio"] = r
            assigned.append(g["lr"])
        state["assigned"] = assigned
        if reset_optimizer_state:
            optimizer.state.clear()
        best = max(range(len(groups)), key=lambda j: ratios[j])
        log.debug("auto_rgn: %d tensors, max ratio at %s, median ratio %.3g", len(groups),
                  groups[best]["name"], float(ratios.median()))

    return TrainingPlan(block_lrs=[base_lr] * model.num_blocks, name="auto_rgn", param_groups=param_groups,
                        on_train_start=on_train_start, on_epoch_start=on_epoch_start)


METHOD = PlanMethod(
    "auto_rgn",
    "every block; per-tensor lr = base lr x normalised relative gradient norm, each epoch",
    {"batches": int, "norm_layers": str, "reset_optimizer_state": bool, "aux_loss_weight": float},
    build,
)
