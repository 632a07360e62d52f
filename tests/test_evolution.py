import numpy as np
import pytest

from evotune.search.evolution import (
    Individual,
    adopt,
    biotune_search,
    crossover,
    draw_parents,
    extinction_probabilities,
    make_child,
    mutate,
    rank_linear_probs,
)


def test_rank_linear_probabilities_favour_better_ranks():
    assert rank_linear_probs(4) == pytest.approx([0.4, 0.3, 0.2, 0.1])


def test_draw_parents_is_rank_biased_and_distinct():
    rng = np.random.default_rng(0)
    counts = np.zeros(5)
    for _ in range(4000):
        a, b, c = draw_parents(rng, 5)
        assert len({a, b, c}) == 3
        counts[a] += 1
    assert counts[0] > counts[2] > counts[4]


def test_crossover_blends_each_gene_with_its_own_weight():
    p1, p2 = np.array([0.0, 1.0, 0.2, 0.8]), np.array([1.0, 0.0, 0.6, 0.8])
    child = crossover(np.random.default_rng(11), p1, p2)
    w = np.random.default_rng(11).random(4)
    assert child == pytest.approx(w * p1 + (1 - w) * p2)
    assert child[3] == pytest.approx(0.8)  # equal parents -> same gene


def test_mutation_is_scaled_by_extinction_probability():
    child = np.full(6, 0.5)
    # pbar = 0: probability 1/n, but the step pbar * U(-1,1) is zero -> unchanged
    assert mutate(np.random.default_rng(1), child, 0.0) == pytest.approx(child)
    # pbar = 1: every gene mutates by U(-1, 1), clipped to [0, 1]
    out = mutate(np.random.default_rng(2), child, 1.0)
    rng = np.random.default_rng(2)
    rng.random(6)
    delta = rng.uniform(-1, 1, size=6)
    assert out == pytest.approx(np.clip(child + delta, 0, 1))
    # pbar = 0.5: per-gene probability (pbar (n-1) + 1) / n
    rng = np.random.default_rng(5)
    changed = [np.sum(mutate(rng, child, 0.5) != child) for _ in range(3000)]
    assert np.mean(changed) / 6 == pytest.approx((0.5 * 5 + 1) / 6, abs=0.02)


def test_adoption_moves_child_towards_parents_and_prototype():
    child, p1, p2, proto = np.full(3, 0.2), np.full(3, 0.6), np.full(3, 0.4), np.full(3, 1.0)
    out = adopt(np.random.default_rng(4), child, p1, p2, proto)
    u1, u2, u3 = np.random.default_rng(4).random(3)
    a = u1 * (0.5 - 0.2)
    b = u2 * (1.0 - 0.2)
    assert out == pytest.approx(np.full(3, 0.2 + a + u3 * (b - a)))


def test_extinction_probabilities_formula():
    assert extinction_probabilities([0.1, 0.2, 0.4]) == pytest.approx([0.0, 0.375, 1.0])
    assert extinction_probabilities([0.3, 0.3, 0.3]) == pytest.approx([0, 0, 0])


def test_pool_of_two_gives_a_random_child():
    pool = [Individual(np.full(4, 0.5), 0.1), Individual(np.full(4, 0.6), 0.2)]
    child, parents = make_child(np.random.default_rng(0), pool, 4)
    assert parents is None and child.shape == (4,)
    assert np.any(child[:-1] > child[-1])


def sphere(target):
    def evaluate(reqs):
        return [float(np.mean((r.genes - target) ** 2)) for r in reqs]

    return evaluate


def test_search_makes_the_papers_number_of_evaluations_and_never_loses_its_best(search_config):
    cfg = search_config(population=6, elite=2, generations=4, seed=3)
    seen = []

    def evaluate(reqs):
        seen.extend(reqs)
        return sphere(np.array([0.9, 0.1, 0.8, 0.2, 0.5]))(reqs)

    bests = []
    res = biotune_search(4, cfg, evaluate, n_chunks=2, on_generation=lambda g, pop: bests.append(pop[0].fitness))
    assert len(seen) == cfg.evaluations == 6 + 4 * (2 * 2 + 6 - 2)
    assert len({r.key for r in seen}) == len(seen)
    assert [r.chunk for r in seen if r.generation == 1] == [1] * 8
    assert {r.chunk for r in seen if r.generation == 2} == {0}
    # elites are kept unless beaten: the population's best never gets worse
    assert all(b2 <= b1 for b1, b2 in zip(bests, bests[1:]))
    assert res.best.fitness == min(bests)
    roles = [r.role for r in seen if r.generation == 1]
    assert roles[:4] == ["elite_plus", "elite_minus"] * 2


def test_elite_exploitation_moves_one_selected_gene_both_ways(search_config):
    cfg = search_config(population=5, elite=2, generations=1, seed=9)
    seen = []

    def evaluate(reqs):
        seen.extend(reqs)
        return [0.5 - 0.01 * i for i, _ in enumerate(reqs)] if reqs[0].generation == 0 else [0.9] * len(reqs)

    biotune_search(3, cfg, evaluate)
    init = {r.key: r.genes for r in seen if r.generation == 0}
    # sorted best first: the last initial genomes have the lowest fitness
    elites = [init["g0/init/4"], init["g0/init/3"]]
    for e, elite in enumerate(elites):
        plus = next(r.genes for r in seen if r.key == f"g1/elite_plus/{e}")
        minus = next(r.genes for r in seen if r.key == f"g1/elite_minus/{e}")
        moved = np.flatnonzero((plus != elite) | (minus != elite))
        assert len(moved) == 1
        gi = moved[0]
        assert gi < 3 and elite[gi] > elite[-1]  # a selected block gene
        d_plus, d_minus = plus[gi] - elite[gi], minus[gi] - elite[gi]
        assert abs(d_plus) <= 0.25 + 1e-12 and abs(d_minus) <= 0.25 + 1e-12
        assert np.sign(d_plus) == -np.sign(d_minus) or 0.0 in (plus[gi], minus[gi], 1.0)


def test_children_that_beat_their_parents_shrink_the_pool_until_random_children(search_config):
    cfg = search_config(population=10, elite=0, generations=1, seed=1)
    counter = iter(range(1000))
    roles = []

    def evaluate(reqs):
        roles.extend(r.role for r in reqs)
        return [1.0 - 0.001 * next(counter) for _ in reqs]  # every new genome beats all before it

    biotune_search(4, cfg, evaluate)
    offspring = [r for r in roles[10:]]
    assert offspring == ["child"] * 4 + ["random_child"] * 6


def test_search_is_reproducible_with_a_fixed_seed(search_config):
    target = np.array([0.3, 0.7, 0.9, 0.4])
    cfg = search_config(population=5, elite=1, generations=3, seed=42)
    a = biotune_search(3, cfg, sphere(target))
    b = biotune_search(3, cfg, sphere(target))
    assert a.best.genes == pytest.approx(b.best.genes)
    c = biotune_search(3, search_config(population=5, elite=1, generations=3, seed=43), sphere(target))
    assert not np.allclose(a.best.genes, c.best.genes)


def test_config_validation_names_the_parameter(search_config):
    with pytest.raises(ValueError, match="search.elite"):
        search_config(population=4, elite=4)
    with pytest.raises(ValueError, match="search.population"):
        search_config(population=2, elite=0)


def _record_pools(monkeypatch):
    """Spy on make_child and mutate: the mating pool (key, fitness) and the mutation's pbar of every child."""
    from evotune.search import evolution

    pools, pbars = [], []
    real_make_child, real_mutate = evolution.make_child, evolution.mutate

    def make_child(rng, pool, num_genes):
        pools.append([(ind.key, ind.fitness) for ind in pool])
        return real_make_child(rng, pool, num_genes)

    def mutate(rng, child, pbar):
        pbars.append(pbar)
        return real_mutate(rng, child, pbar)

    monkeypatch.setattr(evolution, "make_child", make_child)
    monkeypatch.setattr(evolution, "mutate", mutate)
    return pools, pbars


def test_mating_pool_holds_the_exploited_elites_with_their_new_fitness(search_config, monkeypatch):
    """SPEC 4b: elites are improved in place before offspring are bred (the authors' code)."""
    pools, _ = _record_pools(monkeypatch)
    cfg = search_config(population=6, elite=2, generations=1, seed=5)

    def evaluate(reqs):
        if reqs[0].generation == 0:
            return [0.5 + 0.01 * i for i in range(len(reqs))]  # g0/init/0 best, then 1, 2, ...
        # elite 1's plus move is the best genome of all; elite 0 is not improved; children are poor
        return [0.1 if r.key == "g1/elite_plus/1" else 0.9 for r in reqs]

    biotune_search(3, cfg, evaluate)
    first = pools[0]
    assert first[0] == ("g1/elite_plus/1", 0.1)  # the exploited elite, re-sorted to the front
    assert ("g0/init/1", 0.51) not in first  # its old self left the pool
    assert ("g0/init/0", 0.5) in first  # an elite kept as it was stays
    assert [f for _, f in first] == sorted(f for _, f in first)
    assert len(first) == cfg.population


def test_first_offspring_are_not_mutated_and_later_ones_are(search_config, monkeypatch):
    """SPEC 4b: extinction probabilities are first computed after generation 1."""
    _, pbars = _record_pools(monkeypatch)
    cfg = search_config(population=6, elite=2, generations=2, seed=5)
    biotune_search(3, cfg, sphere(np.array([0.9, 0.1, 0.8, 0.2])))
    children = cfg.population - cfg.elite
    assert pbars[:children] == [0.0] * children
    assert any(p > 0 for p in pbars[children:])
