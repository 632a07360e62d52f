"""The comparison methods: what each one trains, its hooks, and the search baselines' budget."""

import numpy as np
import pytest
import torch
from torch import nn

from evotune.backbones import StagedModel, build_model
from evotune.genome import decode
from evotune.methods import (
    METHODS,
    PLAN_METHODS,
    SEARCH_METHODS,
    Budget,
    GenomeShare,
    block_parameter_counts,
    check_compare_params,
    evaluation_chunk,
    generation_equivalent,
    get_method,
    mask_share,
    trainable_parameters,
)
from evotune.methods.auto_rgn import norm_parameter_ids, relative_gradient_norms
from evotune.methods.deft import de_crossover, de_mutation, deft_phenotype
from evotune.methods.lora import (
    LoRAConv2d,
    LoRALinear,
    LoRAMultiheadAttention,
    add_lora,
    merge_lora_state_dict,
)
from evotune.methods.sp_regularization import sp_penalty
from evotune.training import DeviceData, Trainer, apply_freezing

BASE_LR = 1e-3


@pytest.fixture(scope="module")
def train_cfg(train_config):
    return train_config(epochs=1, patience=1, batch_size=6, eval_batch_size=64, device="cpu", base_lr=BASE_LR)


@pytest.fixture(scope="module")
def setup(train_cfg, make_split):
    torch.manual_seed(0)
    trainer = Trainer(build_model("resnet10", 3), train_cfg, mean=[0.3] * 3, std=[0.25] * 3)
    train = DeviceData.from_split(make_split(4, 3, seed=0), trainer.device)
    val = DeviceData.from_split(make_split(2, 3, seed=1), trainer.device)
    return trainer, train, val


@pytest.fixture(scope="module")
def train_and_diff(method_params):
    """``train_and_diff(setup, method, **params)``: train 1 epoch; per parameter name, whether it moved;
    also the trained state."""
    def run(setup, method, **params):
        trainer, train, val = setup
        plan = get_method(method).plan(trainer.model, BASE_LR, **method_params(method, **params))
        res = trainer.train(plan, train, val, seed=1, keep_best_state=True)
        state = res.best_state
        moved = {k: not torch.equal(v, trainer.pristine[k].cpu()) for k, v in state.items() if k in trainer.pristine}
        return plan, state, moved

    return run


def params_of(trainer, block):
    return [f"stages.{block}.{n}" for n, _ in trainer.model.stages[block].named_parameters()]


def buffers_of(trainer, block):
    return [f"stages.{block}.{n}" for n, _ in trainer.model.stages[block].named_buffers()]


# --------------------------------------------------------------------------- registry


def test_registry_and_unknown_names(base_parameters):
    assert set(PLAN_METHODS) == {"full_finetune", "from_scratch", "linear_probe", "surgical", "auto_rgn", "l2_sp",
                                 "l1_sp", "lora"}
    assert set(SEARCH_METHODS) == {"deft", "random_search", "tpe", "nsga2"}
    with pytest.raises(ValueError, match=r"compare\.methods.*full_finetune.*tpe"):
        get_method("full_fine_tune")
    with pytest.raises(ValueError, match=r"compare\.lora.*rank"):
        METHODS["lora"].resolve_params({"ranks": 4})
    compare = {**base_parameters()["compare"], "seeds": [1, 2]}
    with pytest.raises(ValueError, match="Unknown method"):
        check_compare_params({**compare, "methods": ["lora", "nope"]})
    with pytest.raises(ValueError, match=r"compare\.lora\.rank must be an integer, got 'eight'"):
        check_compare_params({**compare, "lora": {**compare["lora"], "rank": "eight"}})
    with pytest.raises(ValueError, match=r"Missing parameter.*compare\.lora\.alpha"):
        check_compare_params({**compare, "lora": {"rank": 8, "init_seed": 0}})
    check_compare_params({**compare, "methods": list(METHODS)})
    # ranges and what a search baseline needs of the search settings are checked before anything runs
    with pytest.raises(ValueError, match=r"deft \(DE/rand/1\) needs search.population >= 4, got 3"):
        check_compare_params({**compare, "methods": ["deft"]}, population=3)
    with pytest.raises(ValueError, match=r"compare\.deft\.CR must be in \[0, 1\], got 1.5"):
        check_compare_params({**compare, "methods": ["deft"], "deft": {**compare["deft"], "CR": 1.5}}, population=10)


# --------------------------------------------------------------------------- what each plan trains


def test_linear_probe_moves_only_the_head(setup, train_and_diff, method_params):
    trainer = setup[0]
    _, _, moved = train_and_diff(setup, "linear_probe")
    head = trainer.model.head_index
    assert all(moved[k] for k in params_of(trainer, head))
    frozen = [k for b in range(head) for k in params_of(trainer, b) + buffers_of(trainer, b)]
    assert not any(moved[k] for k in frozen)  # weights and batch-norm statistics
    plan = get_method("linear_probe").plan(trainer.model, BASE_LR, **method_params("linear_probe"))
    assert trainable_parameters(trainer.model, plan) == sum(p.numel() for p in trainer.model.stages[head].parameters())


def test_surgical_block_2_moves_block_2_and_head(setup, train_and_diff, method_params):
    trainer = setup[0]
    plan, _, moved = train_and_diff(setup, "surgical", block=2)
    head = trainer.model.head_index
    assert plan.trained_blocks == [2, head]
    for b in range(trainer.model.num_blocks):
        changed = [moved[k] for k in params_of(trainer, b)]
        assert all(changed) if b in (2, head) else not any(changed), b
    labels = [label for label, _ in get_method("surgical").variants(trainer.model, **method_params("surgical"))]
    assert labels == [f"surgical[{n}]" for n in trainer.model.block_names[:-1]]
    variants = get_method("surgical").variants(trainer.model, **method_params("surgical", blocks=["layer3", 1]))
    assert [p["block"] for _, p in variants] == [3, 1]
    with pytest.raises(ValueError, match="linear_probe"):
        get_method("surgical").plan(trainer.model, BASE_LR, **method_params("surgical", block="fc"))


def test_full_finetune_moves_every_block(setup, train_and_diff):
    trainer = setup[0]
    _, _, moved = train_and_diff(setup, "full_finetune")
    for b in range(trainer.model.num_blocks):
        assert any(moved[k] for k in params_of(trainer, b)), b


def test_from_scratch_redraws_every_weight_trains_every_block_and_puts_the_pretrained_back(setup, method_params):
    trainer, train, val = setup
    pretrained = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    plan = get_method("from_scratch").plan(trainer.model, BASE_LR, **method_params("from_scratch"))
    assert plan.block_lrs == [BASE_LR] * trainer.model.num_blocks
    torch.manual_seed(3)
    undo = plan.prepare(trainer.model)
    redrawn = trainer.model.state_dict()
    for b in range(trainer.model.num_blocks - 1):  # every backbone block's weights are new
        assert not torch.equal(redrawn[params_of(trainer, b)[0]], pretrained[params_of(trainer, b)[0]]), b
    undo()
    assert all(torch.equal(v, pretrained[k]) for k, v in trainer.model.state_dict().items())
    res = trainer.train(plan, train, val, seed=1, keep_best_state=True)  # through the loop, undone after
    after = trainer.model.state_dict()  # the trainer's pristine (pretrained) backbone, whatever ran before
    assert res.epochs_run == 1 and all(torch.equal(after[k], trainer.pristine[k]) for k in pretrained
                                       if k.startswith("stages.") and not k.startswith(f"stages.{trainer.model.head_index}."))
    moved = [k for k, v in res.best_state.items() if k in pretrained and not torch.equal(v, pretrained[k].cpu())]
    assert {k.split(".")[1] for k in moved if k.startswith("stages.")} == {str(b) for b in
                                                                          range(trainer.model.num_blocks)}
    assert trainable_parameters(trainer.model, plan) == sum(p.numel() for p in trainer.model.parameters())


def test_lora_trains_adapters_and_head_only_and_undoes_its_surgery(setup, train_and_diff):
    trainer = setup[0]
    keys = list(trainer.pristine)
    plan, state, _ = train_and_diff(setup, "lora", rank=2, alpha=4.0)
    # after training the model is the original architecture again
    assert list(trainer.model.state_dict()) == keys
    assert not any(isinstance(m, LoRAConv2d) for m in trainer.model.modules())
    base = {k.replace(".base.", "."): v for k, v in state.items() if ".base." in k}
    assert base and all(torch.equal(v, trainer.pristine[k].cpu()) for k, v in base.items())  # original convs
    a = [k for k in state if k.endswith("lora_A.weight")]
    b = [k for k in state if k.endswith("lora_B.weight")]
    assert len(a) == len(b) == sum(isinstance(m, nn.Conv2d) for s in trainer.model.stages[:-1] for m in s.modules())
    assert any(state[k].abs().sum() > 0 for k in b)  # B starts at zero and moved
    head = trainer.model.head_index
    for k in params_of(trainer, head):
        assert not torch.equal(state[k], trainer.pristine[k].cpu())
    frozen = [k for blk in range(head) for k in params_of(trainer, blk) + buffers_of(trainer, blk)
              if "conv" not in k and "downsample.0" not in k]
    assert frozen and all(torch.equal(state[k], trainer.pristine[k].cpu()) for k in frozen)  # batch norms too
    merged = merge_lora_state_dict(state)
    assert list(merged) == keys
    # the merged plain model computes what the adapted model computed
    x = torch.rand(2, 3, 32, 32)
    lora_model = build_model("resnet10", 3)
    _, undo = add_lora(lora_model, 2, 4.0)
    lora_model.load_state_dict(state)
    plain = build_model("resnet10", 3)
    plain.load_state_dict(merged)
    torch.testing.assert_close(lora_model.eval()(x), plain.eval()(x), rtol=1e-4, atol=1e-5)
    undo()
    assert list(lora_model.state_dict()) == keys
    # trainable share: adapters + head
    n = trainable_parameters(trainer.model, plan)
    adapters = sum(state[k].numel() for k in a + b)
    assert n == adapters + sum(p.numel() for p in trainer.model.stages[head].parameters())
    assert list(trainer.model.state_dict()) == keys


def test_lora_skips_grouped_convs():
    model = StagedModel("toy", ["body", "head"], [
        nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, groups=2), nn.Conv2d(4, 6, 3, stride=2, padding=2, dilation=2)),
        nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 2)),
    ])
    x = torch.rand(1, 4, 8, 8)
    before = model(x).detach()
    wrappers, _ = add_lora(model, 3, 3.0)
    assert len(wrappers) == 1 and not isinstance(model.stages[0][0], LoRAConv2d)
    w = wrappers[0]
    assert (w.lora_A.stride, w.lora_A.padding, w.lora_A.dilation, w.lora_A.kernel_size) == ((2, 2), (2, 2), (2, 2), (3, 3))
    assert w.lora_B.kernel_size == (1, 1) and float(w.lora_scale) == 1.0
    torch.testing.assert_close(model(x), before)  # B = 0: the adapted model starts as the original


@torch.no_grad()
def test_sp_penalties_at_w0_and_after_a_known_perturbation(method_params):
    torch.manual_seed(0)
    model = build_model("resnet10", 3)
    alpha, beta = 0.3, 0.7
    l2 = get_method("l2_sp").plan(model, BASE_LR, **method_params("l2_sp", alpha=alpha, beta=beta))
    l1 = get_method("l1_sp").plan(model, BASE_LR, **method_params("l1_sp", alpha=alpha, beta=beta))
    l2.prepare(model)  # w0 = the weights at prepare time
    l1.prepare(model)
    head = list(model.stages[-1].parameters())
    for p in head:
        p.zero_()
    assert float(l2.penalty(model)) == 0.0 and float(l1.penalty(model)) == 0.0
    w = model.stages[2][0].conv1.weight
    w.add_(0.01)
    for p in head:
        p.fill_(0.5)
    n_head = sum(p.numel() for p in head)
    head_term = beta / 2 * 0.25 * n_head
    assert float(l2.penalty(model)) == pytest.approx(alpha / 2 * w.numel() * 1e-4 + head_term, rel=1e-4)
    assert float(l1.penalty(model)) == pytest.approx(alpha * w.numel() * 0.01 + head_term, rel=1e-4)
    assert float(sp_penalty([(w, w - 0.01)], [], alpha=2.0, beta=0.0)) == pytest.approx(w.numel() * 1e-4, rel=1e-4)


def test_l2_sp_trains_through_the_loop(setup, train_and_diff):
    trainer = setup[0]
    plan, _, moved = train_and_diff(setup, "l2_sp", alpha=0.1, beta=0.1)
    assert plan.penalty is not None and all(any(moved[k] for k in params_of(trainer, b))
                                            for b in range(trainer.model.num_blocks))


def test_auto_rgn_sets_per_tensor_lrs_from_relative_gradient_norms(make_split, method_params):
    torch.manual_seed(0)
    model = build_model("resnet10", 3)
    plan = get_method("auto_rgn").plan(model, BASE_LR, **method_params("auto_rgn", batches=2))
    apply_freezing(model, plan)
    groups = plan.param_groups(model, plan.block_lrs)
    norms = norm_parameter_ids(model)
    assert norms and all(not p.requires_grad for m in model.modules() for p in m.parameters(recurse=False)
                         if id(p) in norms)  # batch norm frozen (default), not in the optimizer
    assert {id(g["params"][0]) for g in groups}.isdisjoint(norms)
    assert trainable_parameters(model, plan) == sum(p.numel() for g in groups for p in g["params"])
    opt = torch.optim.Adam(groups, lr=BASE_LR)
    plan.on_train_start(model, opt)
    split = make_split(4, 3)
    x = (split.images.float() / 255 - 0.3) / 0.25
    batches = [(x[i:i + 6], split.labels[i:i + 6], 0) for i in (0, 6)]
    model.train()
    params = [g["params"][0] for g in groups]
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    # by hand: ordinary backward passes, ||grad w|| / ||w|| per tensor, mean over the 2 batches, over the max
    ratios = torch.zeros(len(params), dtype=torch.float64)
    for xb, yb, _ in batches:
        model.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model.forward_from(0, xb), yb).backward()
        ratios += torch.tensor([float(p.grad.norm() / p.norm()) for p in params], dtype=torch.float64)
    model.zero_grad(set_to_none=True)
    expected = ratios / ratios.max()
    assert relative_gradient_norms(model, params, iter(batches), 2).argmax() == expected.argmax()
    with torch.no_grad():
        for k, v in model.named_buffers():
            v.copy_(buffers[k])
    plan.on_epoch_start(model, opt, lambda: iter(batches))
    lrs = torch.tensor([g["lr"] for g in opt.param_groups], dtype=torch.float64)
    torch.testing.assert_close(lrs, BASE_LR * expected, rtol=1e-4, atol=0)
    top = int(torch.argmax(expected))
    assert opt.param_groups[top]["lr"] == pytest.approx(BASE_LR)
    assert float(expected.min()) < 0.5  # the ratios do differ between tensors
    assert all(p.grad is None for p in params)
    assert all(torch.equal(v, buffers[k]) for k, v in model.named_buffers())  # measurement leaves no trace
    # next epoch: the scheduler's step (here x0.5) still applies on top of the new ratios
    for g in opt.param_groups:
        g["lr"] *= 0.5
    plan.on_epoch_start(model, opt, lambda: iter(batches))
    assert max(g["lr"] for g in opt.param_groups) == pytest.approx(0.5 * BASE_LR)
    # a new training starts its schedule factor afresh: the first epoch's top lr is the base lr again
    opt2 = torch.optim.Adam(plan.param_groups(model, plan.block_lrs), lr=BASE_LR)
    with pytest.raises(RuntimeError, match="on_train_start"):
        plan.on_epoch_start(model, opt2, lambda: iter(batches))  # the trainer must announce each training
    plan.on_train_start(model, opt2)
    plan.on_epoch_start(model, opt2, lambda: iter(batches))
    assert max(g["lr"] for g in opt2.param_groups) == pytest.approx(BASE_LR)


def test_auto_rgn_trains_through_the_loop(setup, train_and_diff):
    trainer = setup[0]
    _, _, moved = train_and_diff(setup, "auto_rgn", batches=1)
    bn = [k for k in moved if "bn" in k and k.endswith("weight")]
    assert bn and not any(moved[k] for k in bn)  # frozen norm tensors
    assert moved["stages.1.0.conv1.weight"] and moved[params_of(trainer, trainer.model.head_index)[0]]


# --------------------------------------------------------------------------- search baselines


def test_de_operators_on_a_fixed_random_state():
    pop = np.random.default_rng(1).random((5, 4))
    v = de_mutation(np.random.default_rng(7), pop, 2, 0.5)
    r1, r2, r3 = np.random.default_rng(7).choice(np.array([0, 1, 3, 4]), size=3, replace=False)
    np.testing.assert_allclose(v, np.clip(pop[r1] + 0.5 * (pop[r2] - pop[r3]), 0, 1))
    assert 2 not in (r1, r2, r3) and len({r1, r2, r3}) == 3
    target, mutant = np.zeros(6), np.ones(6)
    u = de_crossover(np.random.default_rng(3), target, mutant, 0.5)
    rng = np.random.default_rng(3)
    j = rng.integers(6)
    mask = rng.random(6) < 0.5
    mask[j] = True
    np.testing.assert_array_equal(u, mask.astype(float))
    assert de_crossover(np.random.default_rng(0), target, mutant, 0.0).sum() == 1  # j_rand only
    assert de_crossover(np.random.default_rng(0), target, mutant, 1.0).sum() == 6
    with pytest.raises(ValueError, match="at least 4"):
        de_mutation(np.random.default_rng(0), pop[:3], 0, 0.5)


def test_deft_phenotype_decodes_to_base_lr_for_selected_blocks():
    d = decode(deft_phenotype([0.9, 0.2, 0.51, 0.5]), BASE_LR, force_head=True)
    assert d.mask == "1011" and d.selected == (True, False, True, False)
    assert all(lr == pytest.approx(BASE_LR, rel=1e-12) for lr in d.block_lrs if lr is not None)
    assert not decode(deft_phenotype([0.1, 0.5, 0.3]), BASE_LR).valid


def test_budget_schedule_matches_biotune(search_config):
    evo = search_config(population=4, elite=1, generations=3)
    assert evo.evaluations == 4 + 3 * 5
    gens = [generation_equivalent(j, evo) for j in range(evo.evaluations)]
    assert gens == [0] * 4 + [1] * 5 + [2] * 5 + [3] * 5
    assert [evaluation_chunk(j, evo, 2) for j in (0, 3, 4, 8, 9, 14)] == [0, 0, 1, 1, 0, 1]
    budget = Budget(lambda reqs: [0.5] * len(reqs), evo, 2)
    budget.evaluate([("a", np.zeros(3), "x")] * 3)
    assert budget.left_in_generation() == 1
    with pytest.raises(RuntimeError, match="budget"):
        budget.evaluate([("b", np.zeros(3), "x")] * 17)


@pytest.mark.parametrize("name", SEARCH_METHODS)
def test_search_baselines_use_exactly_the_budget(name, method_params, search_config):
    evo = search_config(population=5, elite=2, generations=3, seed=3)
    num_blocks = 6
    target = np.linspace(0.1, 0.9, num_blocks + 1)
    seen = []

    def evaluate(reqs):
        seen.extend(reqs)
        out = []
        for r in reqs:
            d = decode(r.genes, BASE_LR)
            out.append(1.0 if not d.valid else float(np.abs(r.genes - target).mean()))
        return out

    sizes = list(range(1, num_blocks + 1))  # parameters per block, head last (NSGA-II's second objective)
    outcome = get_method(name).search(evaluate, num_blocks, evo, n_chunks=2, block_params=sizes,
                                      **method_params(name))
    assert len(seen) == outcome.evaluations == evo.evaluations == 5 + 3 * 7
    assert len({r.key for r in seen}) == len(seen)
    assert [r.chunk for r in seen] == [evaluation_chunk(j, evo, 2) for j in range(len(seen))]
    g = outcome.best_genes
    assert g.shape == (num_blocks + 1,) and g.min() >= 0 and g.max() <= 1
    assert decode(g, BASE_LR).valid
    requests = list(seen)
    assert outcome.best_fitness == min(evaluate(requests))
    again = get_method(name).search(lambda reqs: evaluate(reqs), num_blocks, evo, n_chunks=2, block_params=sizes,
                                    **method_params(name))
    np.testing.assert_array_equal(again.best_genes, g)  # reproducible
    if name == "deft":
        assert all(x in (0.5, np.nextafter(0.5, 1)) for x in g)


def test_tpe_learns_from_its_history(method_params, search_config):
    """TPE against random search on the same budget, fitness and seeds: after its random start-up (the first
    `population` proposals) TPE's proposals are much closer to the optimum, on every seed. A TPE fallen back to
    random sampling is no better than random search (measured: TPE's mean 0.15-0.20 vs random's 0.35-0.42)."""
    target = np.array([0.9, 0.1, 0.9, 0.1, 0.2])

    def fitness_values(name: str, seed: int) -> list[float]:
        evo = search_config(population=4, elite=2, generations=4, seed=seed)  # 28 evaluations
        fits = []

        def evaluate(reqs):
            out = [float(np.abs(r.genes - target).mean()) for r in reqs]
            fits.extend(out)
            return out

        get_method(name).search(evaluate, 4, evo, n_chunks=1, **method_params(name))
        return fits

    for seed in range(5):
        tpe, rnd = fitness_values("tpe", seed), fitness_values("random_search", seed)
        assert len(tpe) == len(rnd) == 28
        assert np.mean(tpe[4:]) < 0.75 * np.mean(rnd[4:]), (seed, np.mean(tpe[4:]), np.mean(rnd[4:]))


def test_nsga2_trades_accuracy_for_a_smaller_trainable_share(method_params, search_config, base_parameters):
    """NSGA-II spends the budget with both objectives known (each row carries its genome's share), ends with a
    front of more than one genome, returns the best by validation, and tells a genome that trains nothing
    (0, 1): dominated by every other. Without the model's parameter counts it refuses to start."""
    from evotune.methods.nsga2 import objectives

    evo = search_config(population=6, elite=2, generations=5, seed=0)  # 6 + 5 * 8 = 46 evaluations
    sizes = [1, 2, 4, 8, 1]  # 4 blocks and the head
    seen = []

    def evaluate(reqs):  # accuracy grows with the share trained, saturating: the small genomes lose little
        out = []
        for r in reqs:
            d = decode(r.genes, BASE_LR)
            share = sum(n for c, n in zip(d.mask, sizes) if c == "1") / sum(sizes)
            out.append(1.0 if not d.valid else 0.5 - 0.3 * min(share, 0.5))
            seen.append((out[-1], share))
        return out

    outcome = get_method("nsga2").search(evaluate, 5, evo, n_chunks=1, block_params=sizes, **method_params("nsga2"))
    assert outcome.evaluations == 46 and outcome.best_fitness == min(f for f, _ in seen)
    assert outcome.extra["population_size"] == 6 and outcome.extra["front_size"] >= 2
    assert [r["trainable_share"] for r in outcome.rows] == [s for _, s in seen]
    assert objectives(1.0, 0.2) == (0.0, 1.0) and objectives(0.25, 0.2) == (0.75, 0.2)
    with pytest.raises(ValueError, match="block_params"):
        get_method("nsga2").search(evaluate, 5, evo, n_chunks=1, **method_params("nsga2"))
    with pytest.raises(ValueError, match=r"compare\.nsga2\.crossover_prob must be in \[0, 1\], got 2"):
        check_compare_params({**base_parameters()["compare"], "methods": ["nsga2"],
                              "nsga2": {**method_params("nsga2"), "crossover_prob": 2}}, population=6)


def test_mask_share_counts_the_parameters_of_the_trained_blocks():
    model = build_model("resnet10", 3)
    counts, total = block_parameter_counts(model)
    assert len(counts) == model.num_blocks and sum(counts) <= total
    mask = "0" * (model.num_blocks - 1) + "1"
    assert mask_share(mask, counts, total) == pytest.approx(counts[-1] / total)
    assert mask_share("1" * model.num_blocks, counts, total) == pytest.approx(sum(counts) / total)
    share = GenomeShare(counts, total, force_head=True)
    assert share(np.array([0.9] + [0.0] * (model.num_blocks - 1) + [0.5])) == pytest.approx(
        (counts[0] + counts[-1]) / total)
    with pytest.raises(ValueError, match="blocks"):
        mask_share("11", counts, total)


def test_plan_methods_params_reach_the_plan(method_params):
    model = build_model("resnet10", 3)
    plan = get_method("lora").plan(model, BASE_LR, **method_params("lora", rank=3))
    assert plan.name == "lora[r=3]" and plan.eval_mode_blocks == frozenset(range(model.num_blocks - 1))
    assert get_method("full_finetune").plan(model, 0.5, **method_params("full_finetune")).block_lrs == [0.5] * model.num_blocks
    with pytest.raises(ValueError, match="norm_layers"):
        get_method("auto_rgn").plan(model, BASE_LR, **method_params("auto_rgn", norm_layers="sometimes"))
    plan = get_method("auto_rgn").plan(model, BASE_LR, **method_params("auto_rgn", norm_layers="base_lr"))
    apply_freezing(model, plan)
    groups = plan.param_groups(model, plan.block_lrs)
    assert sum(not g["rgn"] for g in groups) == len(norm_parameter_ids(model))  # norm tensors at base lr


def _perturbed_adapters(model: nn.Module) -> None:
    """Non-zero B weights (B starts at zero), so that the adapters change the output."""
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.rsplit(".", 2)[-2] in ("lora_B", "lora_out_B"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)


def test_lora_adapts_the_attention_and_mlp_linears_of_transformers(train_cfg, make_split, method_params):
    """ViT: every attention (input and output projection), every MLP Linear and the patch embedding carry
    adapters, the classifier none; the adapted model starts as the original, its merged state is a plain ViT
    computing the same, and a LoRA training moves adapters and head only."""
    from torchvision.models.swin_transformer import ShiftedWindowAttention, SwinTransformer

    from evotune.backbones import redraw_head, staged_from_torchvision

    torch.manual_seed(0)
    model = build_model("vit_tiny32", 3).eval()
    redraw_head(model, 0)  # torchvision starts a ViT's classifier at zero
    keys = list(model.state_dict())
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        before = model(x)
    wrappers, undo = add_lora(model, 2, 4.0)
    kinds = [type(w) for w in wrappers]
    assert kinds.count(LoRAMultiheadAttention) == 4 and kinds.count(LoRALinear) == 8 and kinds.count(LoRAConv2d) == 1
    assert not any(isinstance(m, (LoRALinear, LoRAMultiheadAttention)) for m in model.stages[-1].modules())
    with torch.no_grad():
        torch.testing.assert_close(model(x), before, rtol=1e-5, atol=1e-6)  # B = 0
    _perturbed_adapters(model)
    with torch.no_grad():
        adapted = model(x)
    assert not torch.allclose(adapted, before, atol=1e-4)
    merged = merge_lora_state_dict(model.state_dict())
    assert list(merged) == keys
    plain = build_model("vit_tiny32", 3).eval()
    plain.load_state_dict(merged)
    with torch.no_grad():
        torch.testing.assert_close(plain(x), adapted, rtol=1e-4, atol=1e-5)
    undo()
    assert list(model.state_dict()) == keys

    # Swin: the attention reads its qkv / proj weights itself; its MLP Linears get adapters
    swin = staged_from_torchvision("swin_t", SwinTransformer([4, 4], 8, [1, 1, 1, 1], [1, 1, 1, 1], [2, 2],
                                                            num_classes=3)).eval()
    xs = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        before = swin(xs)
    wrappers, undo = add_lora(swin, 2, 4.0)
    assert sum(isinstance(w, LoRALinear) for w in wrappers) == 8 + 3  # two per MLP, the three patch mergings
    assert not any(isinstance(c, LoRALinear) for m in swin.modules() if isinstance(m, ShiftedWindowAttention)
                   for c in m.children())
    with torch.no_grad():
        torch.testing.assert_close(swin(xs), before, rtol=1e-5, atol=1e-6)
    undo()

    # a LoRA training of the ViT: adapters and head move, nothing else
    trainer = Trainer(build_model("vit_tiny32", 3), train_cfg, mean=[0.3] * 3, std=[0.25] * 3)
    train = DeviceData.from_split(make_split(4, 3, seed=0), trainer.device)
    val = DeviceData.from_split(make_split(2, 3, seed=1), trainer.device)
    plan = get_method("lora").plan(trainer.model, BASE_LR, **method_params("lora", rank=2, alpha=4.0))
    res = trainer.train(plan, train, val, seed=1, keep_best_state=True)
    state, head = res.best_state, f"stages.{trainer.model.head_index}."
    assert any(state[k].abs().sum() > 0 for k in state if k.endswith(("lora_B.weight", "lora_out_B.weight")))
    base = {k.replace(".base.", "."): v for k, v in state.items() if ".base." in k}
    assert base and all(torch.equal(v, trainer.pristine[k].cpu()) for k, v in base.items())
    assert list(trainer.model.state_dict()) == list(trainer.pristine)
    assert any(not torch.equal(state[k], trainer.pristine[k].cpu()) for k in state if k.startswith(head))


# --------------------------------------------------------------------------- plan changes belong to one training


def test_lora_twice_on_one_trainer_never_stacks_and_restores_the_model_exactly(train_cfg, make_split, method_params):
    torch.manual_seed(0)
    trainer = Trainer(build_model("resnet10", 3), train_cfg, mean=[0.3] * 3, std=[0.25] * 3)
    train = DeviceData.from_split(make_split(4, 3, seed=0), trainer.device)
    val = DeviceData.from_split(make_split(2, 3, seed=1), trainer.device)
    plan = get_method("lora").plan(trainer.model, BASE_LR, **method_params("lora", rank=2, alpha=4.0))
    modules = dict(trainer.model.named_modules())
    head = f"stages.{trainer.model.head_index}."
    results = []
    for _ in range(2):
        res = trainer.train(plan, train, val, seed=1, keep_best_state=True)
        results.append(res)
        # the very same modules and state-dict keys as before; every weight but the head's untouched
        assert dict(trainer.model.named_modules()).keys() == modules.keys()
        assert all(m is modules[n] for n, m in trainer.model.named_modules())
        state = trainer.model.state_dict()
        assert list(state) == list(trainer.pristine)
        assert all(torch.equal(v, trainer.pristine[k]) for k, v in state.items() if not k.startswith(head))
    # one layer of adapters per conv each time, and the second training is the first one again
    assert sum(k.endswith("lora_A.weight") for k in results[1].best_state) == sum(
        isinstance(m, nn.Conv2d) for i, s in enumerate(trainer.model.stages) if i != trainer.model.head_index
        for m in s.modules())
    assert results[0].best_state.keys() == results[1].best_state.keys()
    assert all(torch.equal(v, results[1].best_state[k]) for k, v in results[0].best_state.items())
    assert results[0].history == results[1].history
    # adapters on adapters are refused
    model = build_model("resnet10", 3)
    _, undo = add_lora(model, 2, 4.0)
    with pytest.raises(ValueError, match="already holds LoRA adapters"):
        add_lora(model, 2, 4.0)
    undo()
    assert not any(isinstance(m, LoRAConv2d) for m in model.modules())


def test_the_trainer_undoes_a_plan_once_even_when_training_fails(setup, method_params):
    trainer, train, val = setup
    calls = []

    def prepare(model):
        calls.append("prepare")
        return lambda: calls.append("undo")

    def penalty(model):
        raise RuntimeError("boom")

    plan = get_method("full_finetune").plan(trainer.model, BASE_LR, **method_params("full_finetune"))
    plan.prepare, plan.penalty = prepare, penalty
    with pytest.raises(RuntimeError, match="boom"):
        trainer.train(plan, train, val, seed=0)
    assert calls == ["prepare", "undo"]
    plan.penalty = None
    trainer.train(plan, train, val, seed=0)
    assert calls == ["prepare", "undo", "prepare", "undo"]
    trainer.undo_plan()  # nothing left to undo
    assert calls == ["prepare", "undo", "prepare", "undo"]
    assert trainable_parameters(trainer.model, plan) > 0 and calls[4:] == ["prepare", "undo"]


def test_auto_rgn_state_starts_afresh_for_every_training(train_cfg, make_split, method_params):
    torch.manual_seed(0)
    trainer = Trainer(build_model("resnet10", 3), train_cfg.replace(epochs=2, patience=2), mean=[0.3] * 3, std=[0.25] * 3)
    train = DeviceData.from_split(make_split(4, 3, seed=0), trainer.device)
    val = DeviceData.from_split(make_split(2, 3, seed=1), trainer.device)
    plan = get_method("auto_rgn").plan(trainer.model, BASE_LR, **method_params("auto_rgn", batches=1))
    starts, first_epoch_top = [], []
    rgn_start, rgn_epoch = plan.on_train_start, plan.on_epoch_start

    def on_train_start(model, optimizer):
        starts.append(optimizer)
        rgn_start(model, optimizer)

    def on_epoch_start(model, optimizer, batches):
        rgn_epoch(model, optimizer, batches)
        if optimizer is starts[-1] and len(first_epoch_top) < len(starts):
            first_epoch_top.append(max(g["lr"] for g in optimizer.param_groups if g.get("rgn")))

    plan.on_train_start, plan.on_epoch_start = on_train_start, on_epoch_start
    runs = [trainer.train(plan, train, val, seed=3, keep_best_state=True) for _ in range(2)]
    assert len(starts) == 2 and starts[0] is not starts[1]
    assert first_epoch_top == [pytest.approx(BASE_LR)] * 2
    assert runs[0].history == runs[1].history
    assert all(torch.equal(v, runs[1].best_state[k]) for k, v in runs[0].best_state.items())
