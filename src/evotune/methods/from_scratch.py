"""Training from scratch: a reference row, not a fine-tuning method (issue 27).

The backbone's architecture with every weight drawn again (each module's own
``reset_parameters``, batch-norm running statistics included, from the training's seed), then every
block trained at the base learning rate exactly as full fine-tuning trains the pretrained weights. It
tells how much the pretraining is worth on the task: where it comes close to full fine-tuning, the
task cannot say much about which pretrained blocks to fine-tune. The plan's ``prepare`` redraws the
weights and its undo puts the pretrained ones back, so the trainer's model is pristine again after.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..backbones import StagedModel
from ..training import TrainingPlan
from .base import PlanMethod


def redraw_weights(model: StagedModel) -> Callable[[], None]:
    """Draw every parameter and buffer of ``model`` afresh (from torch's global generator); returns the undo."""
    saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for module in model.modules():
            reset = getattr(module, "reset_parameters", None)
            if callable(reset):
                reset()
            stats = getattr(module, "reset_running_stats", None)
            if callable(stats):
                stats()

    def undo() -> None:
        model.load_state_dict(saved)

    return undo


def build(model: StagedModel, base_lr: float) -> TrainingPlan:
    return TrainingPlan(block_lrs=[base_lr] * model.num_blocks, name="from_scratch", prepare=redraw_weights)


METHOD = PlanMethod("from_scratch", "the backbone's architecture from random weights, every block at the base lr "
                    "(a reference: what the pretraining is worth)", {}, build)
