"""Linear probing: only the new head is trained (the backbone is frozen; its batch norm
follows ``training.frozen_bn``: eval mode by default)."""

from __future__ import annotations

from ..backbones import StagedModel
from ..training import TrainingPlan
from .base import PlanMethod


def build(model: StagedModel, base_lr: float) -> TrainingPlan:
    lrs: list[float | None] = [None] * model.num_blocks
    lrs[model.head_index] = base_lr
    return TrainingPlan(block_lrs=lrs, name="linear_probe")


METHOD = PlanMethod("linear_probe", "only the head trained", {}, build)
