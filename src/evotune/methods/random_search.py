"""Random search over BioTune's genome at BioTune's budget.

Genomes are uniform and redrawn until one block is selected (BioTune's own
initialisation), decoded like BioTune's (threshold gene, per-block lr).
Evaluations are batched per generation-equivalent (see
:mod:`evotune.methods.base`).
"""

from __future__ import annotations

import numpy as np

from ..genome import random_genome
from .base import Budget, SearchMethod


def run(budget: Budget, num_blocks: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    while budget.remaining:
        start = budget.used
        batch = [random_genome(rng, num_blocks) for _ in range(budget.left_in_generation())]
        budget.evaluate([(f"random/{start + i}", g, "random") for i, g in enumerate(batch)])
    return {}


METHOD = SearchMethod("random_search", "uniform random genomes, BioTune's decoding and budget", {"seed": int | None}, run)
