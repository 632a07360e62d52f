import numpy as np
import pytest

from evotune.genome import WORST_FITNESS, decode, gene_lr, genome_key, random_genome


def test_gene_lr_spans_a_tenth_to_ten_times_base():
    assert gene_lr(0.5, 1e-3) == pytest.approx(1e-3)
    assert gene_lr(0.0, 1e-3) == pytest.approx(1e-4)
    assert gene_lr(1.0, 1e-3) == pytest.approx(1e-2)
    assert gene_lr(0.75, 1.0) == pytest.approx(10**0.5)


def test_decode_selects_genes_strictly_above_threshold():
    genes = [0.9, 0.2, 0.5, 0.7, 0.5]  # 4 blocks, threshold 0.5
    d = decode(genes, 1e-3, force_head=False)
    assert d.selected == (True, False, False, True)
    assert d.mask == "1001"
    assert d.block_lrs[0] == pytest.approx(gene_lr(0.9, 1e-3))
    assert d.block_lrs[1] is None and d.block_lrs[2] is None
    assert d.valid
    assert d.lr_multipliers(1e-3) == pytest.approx([10**0.8, 0, 0, 10**0.4])


def test_head_is_forced_trainable_at_its_gene_rate():
    genes = [0.9, 0.2, 0.3, 0.5]  # head gene 0.3 below threshold 0.5
    d = decode(genes, 1e-3, force_head=True)
    assert d.selected == (True, False, False)
    assert d.mask == "101"
    assert d.block_lrs[-1] == pytest.approx(gene_lr(0.3, 1e-3))
    assert decode(genes, 1e-3, force_head=False).block_lrs[-1] is None


def test_genome_selecting_nothing_is_invalid_and_stays_frozen():
    d = decode([0.1, 0.2, 0.3, 0.9], 1e-3, force_head=True)
    assert not d.valid
    assert d.block_lrs == (None, None, None)
    assert WORST_FITNESS == 1.0


def test_random_genome_is_always_valid_and_seeded():
    rng = np.random.default_rng(3)
    for _ in range(200):
        g = random_genome(rng, 3)
        assert g.shape == (4,)
        assert decode(g, 1e-3).valid
    a = random_genome(np.random.default_rng(7), 5)
    b = random_genome(np.random.default_rng(7), 5)
    assert genome_key(a) == genome_key(b)
