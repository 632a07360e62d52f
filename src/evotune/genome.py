"""The BioTune genome and its decoding (SPEC section 2) — the one place for it.

A genome for a backbone of B blocks is B + 1 real genes in [0, 1]: one gene per
block (the head is the last block) and a final threshold gene ``t``.

* block i is trained iff ``g_i > t``;
* a trained block's learning rate is ``base_lr * 10 ** (2 * (g_i - 0.5))``
  (0.1x to 10x the base rate, log-uniform in the gene);
* a genome that selects no block is invalid: it is never trained and gets the
  worst fitness (1.0).

**Head policy.** The head is a fresh linear layer; frozen, it could not learn,
so by default (``force_head=True``) the head is always trained, at the rate
its gene encodes. The genome keeps its B + 1 genes either way, and validity is
judged on the genes alone (a genome whose only selected gene is the head is
valid: that is linear probing).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

WORST_FITNESS = 1.0


def gene_lr(gene: float, base_lr: float) -> float:
    """Learning rate encoded by one gene: ``base_lr * 10 ** (2 * (gene - 0.5))``."""
    return float(base_lr * 10.0 ** (2.0 * (float(gene) - 0.5)))


@dataclass(frozen=True)
class DecodedGenome:
    genes: tuple[float, ...]
    selected: tuple[bool, ...]  # per block, from the genes (before the head policy)
    block_lrs: tuple[float | None, ...]  # per block; None = frozen (after the head policy)

    @property
    def valid(self) -> bool:
        return any(self.selected)

    @property
    def threshold(self) -> float:
        return self.genes[-1]

    @property
    def mask(self) -> str:
        """Trained blocks as a string of 0/1, e.g. '001111'."""
        return "".join("1" if lr is not None else "0" for lr in self.block_lrs)

    def lr_multipliers(self, base_lr: float) -> list[float]:
        """Per block: learning rate / base_lr (0 for frozen blocks)."""
        return [0.0 if lr is None else lr / base_lr for lr in self.block_lrs]


def decode(genes, base_lr: float, *, force_head: bool = True) -> DecodedGenome:
    """Decode genes into per-block learning rates (``None`` = frozen)."""
    g = np.asarray(genes, dtype=float)
    blocks, t = g[:-1], g[-1]
    selected = tuple(bool(x > t) for x in blocks)
    lrs: list[float | None] = [gene_lr(x, base_lr) if s else None for x, s in zip(blocks, selected)]
    if force_head and any(selected):
        lrs[-1] = gene_lr(blocks[-1], base_lr)
    return DecodedGenome(genes=tuple(float(x) for x in g), selected=selected, block_lrs=tuple(lrs))


def random_genome(rng: np.random.Generator, num_blocks: int) -> np.ndarray:
    """Uniform genes; redrawn until at least one block is selected."""
    while True:
        g = rng.random(num_blocks + 1)
        if np.any(g[:-1] > g[-1]):
            return g


def gene_names(block_names) -> list[str]:
    """The name of every gene: ``gene_<block>`` per block, ``gene_threshold`` last.

    The columns of the trials and population tables and the parameter names of the
    Optuna trials of a search (:mod:`evotune.search.store`)."""
    names = [f"gene_{b}" for b in block_names]
    if "gene_threshold" in names:
        raise ValueError(f"A block may not be named 'threshold' (blocks {list(block_names)}).")
    return [*names, "gene_threshold"]


def genome_key(genes) -> str:
    """Stable text form of a genome (used to match recorded trials)."""
    return ",".join(f"{float(x):.12g}" for x in genes)
