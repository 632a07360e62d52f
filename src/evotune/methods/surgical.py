"""Surgical fine-tuning (Lee et al., ICLR 2023): one backbone block plus the head.

Parameters: ``block`` (index or name) for one plan; ``blocks`` (list of indices
or names, ``null`` = every backbone block) for the comparison, which trains
one variant per block, reports each and keeps the best by validation.
"""

from __future__ import annotations

from typing import Any

from ..backbones import StagedModel
from ..training import TrainingPlan
from .base import PlanMethod, backbone_block_index


def build(model: StagedModel, base_lr: float, block=None, blocks=None) -> TrainingPlan:
    if block is None:
        raise ValueError("surgical: parameter `block` (the block to train with the head) is required for one plan")
    i = backbone_block_index(model, block)
    lrs: list[float | None] = [None] * model.num_blocks
    lrs[i] = base_lr
    lrs[model.head_index] = base_lr
    return TrainingPlan(block_lrs=lrs, name=f"surgical[{model.block_names[i]}]")


def variants(model: StagedModel, params: dict) -> list[tuple[str, dict]]:
    chosen = params["blocks"]
    idx = list(range(model.head_index)) if chosen is None else [backbone_block_index(model, b) for b in chosen]
    if not idx:
        raise ValueError("compare.surgical.blocks is empty: list blocks, or null for every backbone block")
    return [(f"surgical[{model.block_names[i]}]", {**params, "block": i}) for i in idx]


class SurgicalMethod(PlanMethod):
    internal_params = frozenset({"block"})  # set per variant


METHOD = SurgicalMethod("surgical", "one backbone block + head (each block; best by validation)",
                        {"blocks": list[Any] | None}, build, variants_fn=variants)
