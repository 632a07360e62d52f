import math

import pytest
import torch

from evotune.search.evaluator import genome_plan
from evotune.training import TrainConfig, TrainingPlan, confusion_matrix, macro_accuracy


def snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_frozen_blocks_get_no_update_and_keep_batchnorm_statistics(make_trainer, data):
    trainer = make_trainer()
    train, val = data(trainer)
    before = snapshot(trainer.model)
    # blocks: stem, layer1, layer2, layer3, layer4, fc ; train layer2 and fc only
    plan = TrainingPlan(block_lrs=[None, None, 1e-3, None, None, 1e-3])
    trainer.train(plan, train, val, seed=1, data_key=None)
    after = snapshot(trainer.model)
    for i, name in enumerate(trainer.model.block_names):
        keys = [k for k in before if k.startswith(f"stages.{i}.")]
        assert keys, name
        changed = [k for k in keys if not torch.equal(before[k], after[k])]
        if plan.block_lrs[i] is None:
            assert changed == [], f"frozen block {name} changed: {changed[:3]}"
        else:
            assert any("weight" in k for k in changed), f"trained block {name} did not move"
    # batch-norm running statistics move only in the trained block
    assert not torch.equal(before["stages.2.0.bn1.running_mean"], after["stages.2.0.bn1.running_mean"])
    assert torch.equal(before["stages.3.0.bn1.running_mean"], after["stages.3.0.bn1.running_mean"])


def test_each_trained_block_gets_its_own_learning_rate(make_trainer, data):
    trainer = make_trainer(epochs=1)
    train, val = data(trainer)
    genes = [0.9, 0.1, 0.6, 0.75, 0.2, 0.5, 0.4]  # 6 blocks + threshold 0.4
    plan = genome_plan(genes, 1e-3)
    seen = {}

    def capture(model, optimizer, batches):
        for g in optimizer.param_groups:
            ids = {id(p) for p in g["params"]}
            for i, stage in enumerate(model.stages):
                if ids & {id(p) for p in stage.parameters()}:
                    seen[i] = (g["lr"], ids == {id(p) for p in stage.parameters()})

    plan.on_epoch_start = capture
    trainer.train(plan, train, val, seed=0)
    assert sorted(seen) == [0, 2, 3, 5]  # genes above 0.4 (the head is forced, here selected too)
    for i in seen:
        assert seen[i][0] == pytest.approx(1e-3 * 10 ** (2 * (genes[i] - 0.5)))
        assert seen[i][1], "a group must hold exactly its block's parameters"


def test_frozen_prefix_cache_gives_the_same_training_as_full_forward(make_trainer, data):
    plan = TrainingPlan(block_lrs=[None, None, None, 1e-3, 1e-3, 1e-3])
    results = []
    for cache in (True, False):
        trainer = make_trainer(epochs=3, cache_frozen_prefix=cache)
        train, val = data(trainer)
        res = trainer.train(plan, train, val, seed=5, data_key=("t",) if cache else None, keep_best_state=True)
        results.append((res, trainer))
    (a, ta), (b, tb) = results
    assert ta.cache.misses > 0 and ta.cache.hits > 0
    assert [h["val_macro_acc"] for h in a.history] == pytest.approx([h["val_macro_acc"] for h in b.history])
    for k in a.best_state:
        assert torch.allclose(a.best_state[k].float(), b.best_state[k].float(), atol=1e-4), k


def test_cached_prediction_matches_plain_forward(make_trainer, data):
    trainer = make_trainer()
    train, val = data(trainer)
    plan = TrainingPlan(block_lrs=[None, None, 1e-3, 1e-3, 1e-3, 1e-3])
    trainer.train(plan, train, val, seed=0, data_key=("p",))
    fast = trainer.predict(val, plan=plan, data_key=("p", "val"))
    trainer.model.eval()
    with torch.no_grad():
        plain = trainer.model(trainer.normalize(val.images)).argmax(1)
    assert torch.equal(fast, plain)


def test_reset_restores_pretrained_weights_and_redraws_the_head_per_seed(make_trainer, data):
    trainer = make_trainer(epochs=1)
    train, val = data(trainer)
    pristine = snapshot(trainer.model)
    trainer.train(TrainingPlan(block_lrs=[1e-3] * 6), train, val, seed=0)
    trainer.reset(3)
    now = snapshot(trainer.model)
    body = [k for k in pristine if not k.startswith("stages.5.")]
    assert all(torch.equal(pristine[k], now[k]) for k in body)
    head3 = now["stages.5.fc.weight"] if "stages.5.fc.weight" in now else [v for k, v in now.items() if k.startswith("stages.5.")][0]
    trainer.reset(4)
    head4 = [v for k, v in snapshot(trainer.model).items() if k.startswith("stages.5.")][0]
    assert not torch.equal(head3, head4)
    trainer.reset(3)
    assert torch.equal(head3, [v for k, v in snapshot(trainer.model).items() if k.startswith("stages.5.")][0])


def test_training_is_reproducible_and_learns(make_trainer, data):
    accs = []
    for _ in range(2):
        trainer = make_trainer(epochs=4)
        train, val = data(trainer)
        res = trainer.train(TrainingPlan(block_lrs=[1e-3] * 6), train, val, seed=7)
        accs.append([h["val_macro_acc"] for h in res.history])
    assert accs[0] == accs[1]
    assert max(accs[0]) > 0.5  # 4 classes: chance is 0.25


def test_non_finite_loss_is_reported_as_diverged(make_trainer, data):
    trainer = make_trainer()
    train, val = data(trainer)
    plan = TrainingPlan(block_lrs=[1e-3] * 6, penalty=lambda m: torch.tensor(math.nan))
    res = trainer.train(plan, train, val, seed=0)
    assert res.diverged and res.best_val_acc == 0.0 and res.epochs_run == 0


def test_early_stopping_respects_patience(make_trainer, data):
    trainer = make_trainer(epochs=30)
    trainer.cfg = trainer.cfg.replace(epochs=30, patience=2)
    train, val = data(trainer)
    res = trainer.train(TrainingPlan(block_lrs=[None] * 5 + [1e-3]), train, val, seed=0)
    accs = [h["val_macro_acc"] for h in res.history]
    # the best epoch is the first with the highest accuracy (recomputed from the history), and training runs
    # exactly `patience` epochs past it, or to the last epoch: not fewer (a trainer that stops early fails)
    assert res.best_epoch == 1 + accs.index(max(accs))
    assert res.epochs_run == len(accs) == min(30, res.best_epoch + 2)
    assert all(a <= max(accs[:res.best_epoch]) for a in accs[res.best_epoch:])
    # patience past the last epoch: every epoch runs
    trainer.cfg = trainer.cfg.replace(epochs=3, patience=5)
    assert trainer.train(TrainingPlan(block_lrs=[None] * 5 + [1e-3]), train, val, seed=0).epochs_run == 3


def test_macro_accuracy_is_class_balanced():
    pred = torch.tensor([0, 0, 0, 0, 1, 0])
    true = torch.tensor([0, 0, 0, 0, 1, 1])
    conf = confusion_matrix(pred, true, 3)
    assert macro_accuracy(conf) == pytest.approx((1.0 + 0.5) / 2)


def test_train_config_rejects_unknown_missing_and_bad_values(base_parameters):
    base = base_parameters()["training"]
    with pytest.raises(ValueError, match="Unknown parameter.*training.epochz"):
        TrainConfig.from_params({**base, "epochz": 3})
    with pytest.raises(ValueError, match="Missing parameter.*training.patience.*parameters_training.yml"):
        TrainConfig.from_params({k: v for k, v in base.items() if k != "patience"})
    with pytest.raises(ValueError, match="training.patience"):
        TrainConfig.from_params({**base, "patience": 0})
    with pytest.raises(ValueError, match="training.epochs must be an integer, got 'abc'"):
        TrainConfig.from_params({**base, "epochs": "abc"})
    for bad in (0, -2, 1.5, "two", True):
        with pytest.raises(ValueError, match="training.cpu_threads"):
            TrainConfig.from_params({**base, "cpu_threads": bad})


def test_cpu_threads_sets_torch_threads_for_the_process(make_trainer):
    before = torch.get_num_threads()
    try:
        make_trainer(cpu_threads=1)
        assert torch.get_num_threads() == 1
        make_trainer()  # null leaves the setting alone
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_fused_adam_is_the_default_and_follows_the_same_update_as_plain_adam(make_trainer, data, train_config):
    """The fused kernel is a speed choice only: the same update rule as torch's default Adam.

    Compared step by step on the same gradients, not through a training: a training is
    chaotic, so rounding differences between the kernels grow with every step by an amount
    that depends on the CPU (AVX2 vs AVX-512). One Adam update moves a parameter by at most
    about ``lr`` (|m_hat| / sqrt(v_hat) <= 1 up to rounding); the two kernels compute it with
    different float32 operation orders, so each step's results differ by a few ulps of that
    update (relative 1e-5 is over 100 ulps) plus the rounding of the parameter itself (an ulp of
    its magnitude), and after K steps by at most K times that.
    """
    from evotune.training import make_optimizer

    fused_cfg = train_config(device="cpu")  # conf/base's default
    plain_cfg = fused_cfg.replace(fused_optimizer=False)
    q = torch.nn.Parameter(torch.zeros(3))
    assert make_optimizer([{"params": [q], "lr": 1e-3}], fused_cfg).defaults["fused"] is True
    assert not make_optimizer([{"params": [q], "lr": 1e-3}], plain_cfg).defaults["fused"]

    g = torch.Generator().manual_seed(0)
    init = [torch.randn(64, 32, generator=g), torch.randn(500, generator=g) * 1e-3]
    params = {name: [torch.nn.Parameter(t.clone()) for t in init] for name in ("fused", "plain")}
    lrs = (2e-3, 5e-4)
    opts = {name: make_optimizer([{"params": [p], "lr": lr} for p, lr in zip(params[name], lrs)], cfg)
            for name, cfg in (("fused", fused_cfg), ("plain", plain_cfg))}
    steps = 25
    for step in range(1, steps + 1):
        grads = [torch.randn(t.shape, generator=g) * scale for t, scale in zip(init, (1.0, 1e-6))]
        for name in ("fused", "plain"):
            for p, grad in zip(params[name], grads):
                p.grad = grad.clone()
            opts[name].step()
        for pf, pp, lr in zip(params["fused"], params["plain"], lrs):
            # plus the rounding of the parameter itself (one float32 ulp of its magnitude per step)
            ulp = torch.finfo(torch.float32).eps * pp.detach().abs().max().item()
            assert (pf - pp).abs().max().item() <= step * (lr * 1e-5 + 2 * ulp)
    for p0, p in zip(init, params["plain"]):
        assert (p - p0).abs().max().item() > 0.5 * min(lrs), "degenerate test: the parameters did not move"

    # and a whole training with each kernel trains (the loss falls, layer2 moves)
    for fused in (True, False):
        trainer = make_trainer(epochs=3, fused_optimizer=fused)
        train, val = data(trainer)
        plan = TrainingPlan(block_lrs=[None, None, 2e-3, 1e-3, 5e-4, 3e-3])
        res = trainer.train(plan, train, val, seed=3, data_key=("d", 0))
        assert res.history[-1]["train_loss"] < res.history[0]["train_loss"]
        assert not torch.equal(trainer.model.state_dict()["stages.2.0.conv1.weight"],
                               trainer.pristine["stages.2.0.conv1.weight"]), "degenerate test: layer2 did not train"


def test_amp_and_channels_last_are_off_on_cpu_by_default_and_validated(make_trainer, base_parameters):
    """``auto`` (conf/base) means CUDA only: the default CPU run stays float32 and contiguous."""
    trainer = make_trainer(epochs=1)
    assert trainer.cfg.amp == "auto" and trainer.cfg.channels_last == "auto"
    assert not trainer.amp and not trainer.channels_last
    conv = next(m for m in trainer.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous()
    for key in ("amp", "channels_last"):
        with pytest.raises(ValueError, match=f"training.{key} must be auto, true or false"):
            TrainConfig.from_params({**base_parameters()["training"], key: "cuda"})
        assert getattr(TrainConfig.from_params({**base_parameters()["training"], key: True}), key) is True


def test_bf16_autocast_and_channels_last_run_on_cpu_and_agree_with_float32(make_trainer, data):
    """The code path CUDA uses by default (bf16 autocast + channels-last), forced on CPU.

    Tolerances: bf16 keeps 8 bits of mantissa (relative rounding 2**-9 per operation), so the
    logits of the same weights under autocast differ from float32 by up to a few percent of
    their scale after ten layers; they are compared at 10 % of the logits' spread, and at
    least 90 % of the predicted classes must agree. A short training must stay finite and
    learn the easy task (chance 0.25).
    """
    trainer = make_trainer(epochs=4, amp=True, channels_last=True)
    assert trainer.amp and trainer.channels_last and trainer.device.type == "cpu"
    convs = [m for m in trainer.model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
    train, val = data(trainer)
    assert trainer.normalize(val.images[:2]).is_contiguous(memory_format=torch.channels_last)
    plan = TrainingPlan(block_lrs=[None, None, 1e-3, 1e-3, 1e-3, 1e-3])  # a frozen prefix: cached in bf16
    res = trainer.train(plan, train, val, seed=7, data_key=("bf16", 0))
    losses = [h["train_loss"] for h in res.history]
    assert not res.diverged and all(math.isfinite(x) for x in losses)
    assert res.best_val_acc > 0.5
    assert trainer.cache.hits > 0
    assert {t.dtype for t in trainer.cache._store.values()} == {torch.bfloat16}

    # the same weights: autocast bf16 logits against float32 logits
    trainer.model.eval()
    x = trainer.normalize(val.images)
    with torch.no_grad():
        with trainer._autocast():
            low = trainer.model(x).float()
        ref = trainer.model(x)
    assert low.dtype == torch.float32 and torch.isfinite(low).all()
    spread = (ref.max() - ref.min()).item()
    assert (low - ref).abs().max().item() <= 0.1 * spread
    assert (low.argmax(1) == ref.argmax(1)).float().mean().item() >= 0.9
    # predict() goes through the prefix cache and autocast too
    assert trainer.predict(val, plan=plan, data_key=(("bf16", 0), "val")).shape == val.labels.shape


def test_lora_adapters_follow_channels_last(make_trainer, data, method_params):
    from evotune.methods import get_method
    from evotune.methods.lora import LoRAConv2d

    trainer = make_trainer(epochs=1, channels_last=True)
    train, val = data(trainer)
    seen = {}

    plan = get_method("lora").plan(trainer.model, 1e-3, **method_params("lora", rank=2, alpha=4.0, init_seed=0))

    def capture(model, optimizer, batches):
        loras = [m for m in model.modules() if isinstance(m, LoRAConv2d)]
        seen["formats"] = [m.lora_A.weight.is_contiguous(memory_format=torch.channels_last) for m in loras]

    plan.on_epoch_start = capture
    res = trainer.train(plan, train, val, seed=0)
    assert not res.diverged and seen["formats"] and all(seen["formats"])
