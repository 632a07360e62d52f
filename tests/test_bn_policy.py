"""The batch-norm policy of frozen blocks (``training.frozen_bn``) and when the frozen-prefix cache applies.

``eval`` (conf/base): frozen blocks run in eval mode, their batch-norm statistics stay pretrained and every
frozen prefix is cached. ``train`` (conf/paper, the authors' code): frozen blocks follow the model's train
mode, their batch-norm statistics adapt, and only a prefix without mode-dependent modules is cached. Under
both, the cache must not change what a training computes.
"""

from __future__ import annotations

import inspect

import pytest
import torch
from torch import nn
from torchvision.models.swin_transformer import ShiftedWindowAttention
from torchvision.ops import StochasticDepth

from evotune.backbones import ARCHITECTURES, StagedModel, build_model
from evotune.errors import ParameterError
from evotune.training import (
    MODE_DEPENDENT_TYPES,
    DeviceData,
    TrainConfig,
    Trainer,
    TrainingPlan,
    apply_freezing,
    mode_dependent,
    set_block_modes,
)

MEAN, STD = (0.3, 0.3, 0.3), (0.25, 0.25, 0.25)
EPOCHS = 3


@pytest.fixture(scope="module")
def data(make_split):
    return (DeviceData.from_split(make_split(8, 4, seed=0), torch.device("cpu")),
            DeviceData.from_split(make_split(4, 4, seed=1), torch.device("cpu")))


def with_batchnorm_statistics(model: nn.Module) -> nn.Module:
    """Non-trivial pretrained running statistics, so that eval and train mode differ."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) * 0.4 - 0.2)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return model


def resnet10() -> StagedModel:
    """Blocks stem, layer1..layer4, fc: batch norm in every block but the head."""
    torch.manual_seed(0)
    return with_batchnorm_statistics(build_model("resnet10", 4))


def bn_free_prefix_model() -> StagedModel:
    """Two conv stages without batch norm or dropout, a stage with batch norm, a head with dropout."""
    torch.manual_seed(0)
    stages = [
        nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU()),
        nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)),
        nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU()),
        nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Dropout(0.3), nn.Linear(16, 4)),
    ]
    return with_batchnorm_statistics(StagedModel("tiny", ["conv1", "conv2", "bn_stage", "head"], stages))


def vit_tiny32() -> StagedModel:
    """Blocks stem, encoder1..encoder4, head: layer norm only, dropout and attention dropout 0."""
    torch.manual_seed(0)
    return build_model("vit_tiny32", 4)


MODELS = {
    # stem, layer1, layer2 frozen: batch norm from the first block on
    "resnet10": (resnet10, [None, None, None, 1e-3, 1e-3, 1e-3], {"eval": 3, "train": 0}),
    # conv1, conv2 and bn_stage frozen: only the first two blocks are free of batch norm and dropout
    "bn_free_prefix": (bn_free_prefix_model, [None, None, None, 1e-2], {"eval": 3, "train": 2}),
    # stem, encoder1, encoder2 frozen: no module of a torchvision ViT reads its mode, the cache applies under both
    "vit_tiny32": (vit_tiny32, [None, None, None, 1e-3, 1e-3, 1e-3], {"eval": 3, "train": 3}),
}


def train_once(model_fn, block_lrs, train_config, data, *, frozen_bn, cache):
    cfg = train_config(epochs=EPOCHS, patience=EPOCHS, batch_size=16, eval_batch_size=32, device="cpu",
                       frozen_bn=frozen_bn, cache_frozen_prefix=cache)
    trainer = Trainer(model_fn(), cfg, mean=MEAN, std=STD)
    train, val = data
    result = trainer.train(TrainingPlan(block_lrs=list(block_lrs)), train, val, seed=3, data_key=("t",),
                           keep_best_state=True)
    return result, trainer


@pytest.mark.parametrize("frozen_bn", ["eval", "train"])
@pytest.mark.parametrize("name", list(MODELS))
def test_the_cache_is_used_exactly_where_it_cannot_change_the_training(name, frozen_bn, train_config, data):
    model_fn, block_lrs, prefixes = MODELS[name]
    prefix = prefixes[frozen_bn]
    model = model_fn()
    plan = TrainingPlan(block_lrs=list(block_lrs))
    apply_freezing(model, plan)
    assert plan.frozen_prefix(model, frozen_bn) == prefix

    cached, tc = train_once(model_fn, block_lrs, train_config, data, frozen_bn=frozen_bn, cache=True)
    full, tf = train_once(model_fn, block_lrs, train_config, data, frozen_bn=frozen_bn, cache=False)
    assert cached.epochs_run == full.epochs_run == EPOCHS
    assert (tf.cache.misses, tf.cache.hits) == (0, 0)
    if prefix:  # one fill for the training data and one for the validation data, which every later epoch reads
        assert (tc.cache.misses, tc.cache.hits) == (2, EPOCHS - 1)
        # the cache computes the prefix in other batch groupings: the same up to rounding (as test_training.py)
        assert [h["val_macro_acc"] for h in cached.history] == pytest.approx([h["val_macro_acc"] for h in full.history])
        assert [h["train_loss"] for h in cached.history] == pytest.approx([h["train_loss"] for h in full.history],
                                                                           rel=1e-4)
        for k in full.best_state:
            a, b = cached.best_state[k].float(), full.best_state[k].float()
            if k.endswith("in_proj_bias"):  # attention's key bias: softmax ignores it, its gradient is rounding
                e = a.numel() // 3         # noise that Adam turns into full steps; compare the query and value bias
                a, b = torch.cat([a[:e], a[2 * e:]]), torch.cat([b[:e], b[2 * e:]])
            assert torch.allclose(a, b, atol=1e-4), k
    else:  # not cached: the very same computation
        assert (tc.cache.misses, tc.cache.hits) == (0, 0)
        assert cached.history == full.history
        assert all(torch.equal(cached.best_state[k], full.best_state[k]) for k in full.best_state)


@pytest.mark.parametrize("frozen_bn", ["eval", "train"])
def test_frozen_batchnorm_statistics_stay_pretrained_under_eval_and_adapt_under_train(frozen_bn, train_config, data):
    model_fn, block_lrs, _ = MODELS["resnet10"]
    result, trainer = train_once(model_fn, block_lrs, train_config, data, frozen_bn=frozen_bn, cache=True)
    frozen = [i for i, lr in enumerate(block_lrs) if lr is None]
    for state in (result.best_state, trainer.model.state_dict()):
        stats = {k: v for k, v in state.items()
                 if int(k.split(".")[1]) in frozen and k.rsplit(".", 1)[1] in ("running_mean", "running_var")}
        assert len(stats) >= 2 * len(frozen)
        moved = [k for k, v in stats.items() if not torch.equal(v.cpu(), trainer.pristine[k].cpu())]
        if frozen_bn == "eval":
            assert moved == []
        else:
            assert sorted(moved) == sorted(stats)  # every frozen batch norm adapted to the target data
        weights = [k for k in state if int(k.split(".")[1]) in frozen and k.endswith("weight")]
        assert all(torch.equal(state[k].cpu(), trainer.pristine[k].cpu()) for k in weights)  # no gradient step


def test_block_modes_per_policy_and_eval_mode_blocks_always_in_eval_mode():
    model = bn_free_prefix_model()
    plan = TrainingPlan(block_lrs=[None, None, 1e-3, 1e-3], eval_mode_blocks=frozenset({2}))
    modes = {}
    for policy in ("eval", "train"):
        set_block_modes(model, plan, True, policy)
        modes[policy] = [stage.training for stage in model.stages]
        assert all(m.training == stage.training for stage in model.stages for m in stage.modules())
        set_block_modes(model, plan, False, policy)
        assert not any(m.training for m in model.modules())
    assert modes == {"eval": [False, False, False, True], "train": [True, True, False, True]}
    with pytest.raises(ValueError, match="frozen_bn"):
        set_block_modes(model, plan, True, "frozen")


def test_mode_dependent_modules():
    dependent = [nn.BatchNorm2d(3), nn.BatchNorm1d(3, track_running_stats=False), nn.InstanceNorm2d(3, track_running_stats=True),
                 nn.Dropout(0.1), nn.Dropout2d(0.1), nn.AlphaDropout(0.1), StochasticDepth(0.1, "row"),
                 nn.Sequential(nn.Conv2d(3, 3, 1), nn.Sequential(nn.BatchNorm2d(3))),
                 nn.MultiheadAttention(4, 2, dropout=0.1), ShiftedWindowAttention(4, [2, 2], [1, 1], 2, dropout=0.1),
                 ShiftedWindowAttention(4, [2, 2], [1, 1], 2, attention_dropout=0.1)]
    independent = [nn.Conv2d(3, 3, 1), nn.ReLU(), nn.MaxPool2d(2), nn.GroupNorm(1, 3), nn.LayerNorm(3), nn.Linear(3, 3),
                   nn.Sequential(nn.Conv2d(3, 3, 1), nn.ReLU()),
                   # rates 0: the same computation in both modes (torchvision's ViTs, the first stochastic depth)
                   nn.Dropout(0.0), StochasticDepth(0.0, "row"), nn.MultiheadAttention(4, 2),
                   ShiftedWindowAttention(4, [2, 2], [1, 1], 2)]
    assert all(mode_dependent(m) for m in dependent)
    assert not any(mode_dependent(m) for m in independent)


def test_no_other_module_of_the_registered_architectures_reads_its_mode():
    """Every module whose forward reads ``self.training`` is (or holds) a module :func:`mode_dependent` knows,
    and the cached prefix under ``train`` is what the architectures' layouts say."""
    models = {}
    for arch in ARCHITECTURES:
        with torch.device("meta"):  # the module tree only: no memory, no initialisation
            models[arch] = model = build_model(arch, 4)
        for m in model.modules():
            forward = type(m).forward
            reads_mode = "self.training" in inspect.getsource(forward) if inspect.isfunction(forward) else False
            if reads_mode:
                # it is (or holds) a module mode_dependent knows, which decides by its rates
                assert any(isinstance(k, tuple(MODE_DEPENDENT_TYPES)) for k in m.modules()), \
                    f"{arch}: {type(m).__qualname__} reads self.training but mode_dependent does not know it"
    assert mode_dependent(models["inception_v3"].stages[9])  # AuxLogits: its classifier runs in train mode only
    # ViT-B/16: dropout 0 everywhere; Swin-T, ConvNeXt-T: stochastic depth from the second layer of stage1 on
    for arch, expected in (("vgg19", 5), ("resnet50", 0), ("vgg19_bn", 0), ("inception_v3", 0), ("densenet121", 0),
                           ("vit_b_16", 5), ("swin_t", 1), ("convnext_tiny", 1)):
        model = models[arch]
        plan = TrainingPlan(block_lrs=[None] * model.head_index + [1e-3])  # linear probing
        apply_freezing(model, plan)
        assert plan.frozen_prefix(model, "train") == expected, arch
        assert plan.frozen_prefix(model, "eval") == model.head_index, arch


def test_frozen_bn_must_be_eval_or_train(base_parameters):
    base = base_parameters()["training"]
    assert base["frozen_bn"] == "eval"
    assert TrainConfig.from_params({**base, "frozen_bn": "train"}).frozen_bn == "train"
    with pytest.raises(ParameterError, match=r"training.frozen_bn must be eval \(.*\) or train \(.*\), got 'frozen'"):
        TrainConfig.from_params({**base, "frozen_bn": "frozen"})
    with pytest.raises(ParameterError, match="training.frozen_bn must be a string, got True"):
        TrainConfig.from_params({**base, "frozen_bn": True})
    with pytest.raises(ParameterError, match="Missing parameter.*training.frozen_bn.*parameters_training.yml"):
        TrainConfig.from_params({k: v for k, v in base.items() if k != "frozen_bn"})
