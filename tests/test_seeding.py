"""Every random draw of a training comes from its seed (issue 11).

The head and the batch order have always had seeded generators of their own; dropout,
EfficientNet's stochastic depth and whatever a plan's ``prepare`` draws come from
torch's global generators, which ``Trainer.train`` now forks and seeds from the seed
(``evotune.training.fork_global_rng`` / ``seed_global_rng``). So the same (plan, seed,
data) gives the same result whatever ran before it, and a training leaves the global
generators as it found them.

"Before" is emulated by replacing ``seed_global_rng`` with a no-op: the training then
draws from whatever state the global generator is in, as every training did before.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torchvision.ops import StochasticDepth

import evotune.training as training
from evotune.backbones import StagedModel, build_model, head_linears
from evotune.backbones.registry import ARCHITECTURES, _construct_torchvision, staged_from_torchvision
from evotune.methods.lora import LoRAConv2d, add_lora
from evotune.methods.lora import build as lora_plan
from evotune.search.evaluator import genome_plan
from evotune.training import DeviceData, Trainer, TrainingPlan, TrainResult

N_CLS = 2
#: torchvision's Inception-v3 needs at least 75 x 75 px (smaller inputs shrink to nothing)
INCEPTION_MIN_SIZE = 75
#: the registered architectures with a random layer in training mode, and a tiny input for each
DROPOUT_ARCHS = {"vgg19": 32, "vgg19_bn": 32, "inception_v3": INCEPTION_MIN_SIZE,
                 "mobilenet_v3_small": 32, "efficientnet_b0": 32, "swin_t": 32, "convnext_tiny": 32}
# one batch of 4 training images (batch norm in train mode needs > 1 image per batch), one epoch
@pytest.fixture(scope="module")
def cfg(train_config):
    return train_config(epochs=1, patience=1, batch_size=4, eval_batch_size=8, device="cpu", amp=False,
                        channels_last=False)


def random_blocks(model: StagedModel) -> list[int]:
    """The blocks that hold a layer drawing random numbers in training mode."""
    return sorted({i for i, stage in enumerate(model.stages) for m in stage.modules()
                   if isinstance(m, (nn.modules.dropout._DropoutNd, StochasticDepth)) and m.p > 0})


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors (conftest)


def quick_model(arch: str) -> StagedModel:
    """``arch`` with seeded weights, built in a fraction of torchvision's random init (10 s for VGG-19
    on one thread): built on the meta device, then every weight drawn uniformly (fan-in scaled) from a
    seeded generator, biases zero, batch and layer norm at identity."""
    with torch.device("meta"):
        model = staged_from_torchvision(arch, _construct_torchvision(arch, N_CLS, random_init=False))
    model = model.to_empty(device="cpu")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            for name, p in m.named_parameters(recurse=False):
                if p.dim() > 1:
                    p.uniform_(-1.0, 1.0, generator=g).mul_(p[0].numel() ** -0.5)
                else:
                    norm = isinstance(m, (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm))
                    p.fill_(1.0 if name == "weight" and norm else 0.0)
            for name, b in m.named_buffers(recurse=False):
                b.fill_(1 if name == "running_var" else 0)
    return model


def head_only(model: StagedModel, block_lrs: list[float | None]) -> list[dict]:
    """Optimise only the final classifier layer(s) (``head_linears``); every other weight stays fixed."""
    head = {id(p) for lin in head_linears(model) for p in lin.parameters()}
    for p in model.parameters():
        p.requires_grad_(id(p) in head)
    return [{"params": [p for p in model.parameters() if id(p) in head], "lr": block_lrs[model.head_index]}]


@pytest.fixture(scope="module")
def data(make_split):
    def make(size: int) -> tuple[DeviceData, DeviceData]:
        train, val = make_split(2, N_CLS, size=size, seed=0), make_split(2, N_CLS, size=size, seed=1)
        return DeviceData.from_split(train, torch.device("cpu")), DeviceData.from_split(val, torch.device("cpu"))

    return make


def assert_same(a: TrainResult, b: TrainResult) -> None:
    assert a.history == b.history  # floats compared exactly
    assert a.best_state.keys() == b.best_state.keys()
    for k, v in a.best_state.items():
        assert torch.equal(v, b.best_state[k]), k


def differs(a: TrainResult, b: TrainResult) -> bool:
    return a.history != b.history or any(not torch.equal(v, b.best_state[k]) for k, v in a.best_state.items())


def scramble_global_rng(seed: int) -> None:
    """Some other history: a seeded global generator, advanced by a few draws."""
    torch.manual_seed(seed)
    torch.rand(seed % 97 + 1)


def test_the_dropout_architectures_are_the_registrys():
    """The list below is every registered architecture with dropout or stochastic depth (built on the
    meta device: no weights); a new one fails here until it is tested."""
    found = {}
    for arch in ARCHITECTURES:
        with torch.device("meta"):
            model = staged_from_torchvision(arch, _construct_torchvision(arch, N_CLS, random_init=False))
        if random_blocks(model):
            found[arch] = random_blocks(model)
    assert set(found) == set(DROPOUT_ARCHS)
    assert "resnet10" not in found and "resnet18" not in found
    assert DROPOUT_ARCHS["inception_v3"] >= INCEPTION_MIN_SIZE


@pytest.mark.parametrize("arch", list(DROPOUT_ARCHS))
def test_a_dropout_training_depends_on_its_seed_only(arch, monkeypatch, cfg, data):
    model = quick_model(arch)
    blocks = random_blocks(model)
    # the blocks that draw random numbers run in training mode (the rest is a cached frozen prefix);
    # only the final classifier learns, which keeps VGG's 120M-parameter classifier cheap
    plan = TrainingPlan([cfg.base_lr if i in blocks or i == model.head_index else None
                         for i in range(model.num_blocks)], name=f"{arch}-random-blocks",
                        param_groups=head_only)
    train, val = data(DROPOUT_ARCHS[arch])
    trainer = Trainer(model, cfg, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))

    def run(seed: int, on: Trainer | None = None) -> TrainResult:
        return (on or trainer).train(plan, train, val, seed=seed, data_key="d", keep_best_state=True)

    scramble_global_rng(1)
    outside = torch.random.get_rng_state()
    first = run(3)
    assert torch.equal(torch.random.get_rng_state(), outside), "the training changed the global generator"
    other_seed = run(4)  # another training in between, and another global state
    assert differs(first, other_seed)
    scramble_global_rng(2)
    assert_same(first, run(3))
    # a fresh trainer of the same weights in another state of the process (another worker, a resumed search)
    scramble_global_rng(5)
    fresh = copy.deepcopy(trainer.model)
    fresh.load_state_dict(trainer.pristine)
    assert_same(first, run(3, Trainer(fresh, cfg, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))))

    # before: the training drew its dropout masks from whatever the global generator held
    monkeypatch.setattr(training, "seed_global_rng", lambda seed, device: None)
    scramble_global_rng(1)
    before_1 = run(3)
    scramble_global_rng(2)
    assert differs(before_1, run(3)), "degenerate test: the training draws nothing from the global generator"


@pytest.fixture(scope="module")
def resnet10() -> StagedModel:
    torch.manual_seed(0)
    return build_model("resnet10", N_CLS, weights="none")


PLANS = {
    "mixed": lambda m, lr: genome_plan([0.1, 0.2, 0.6, 0.8, 0.45, 0.7, 0.3], lr),
    "all": lambda m, lr: genome_plan([0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.0], lr),
    "lora": lambda m, lr: lora_plan(m, lr, rank=2, alpha=2.0, init_seed=0),
}


@pytest.mark.parametrize("name", list(PLANS))
def test_results_without_random_layers_do_not_change(resnet10, name, monkeypatch, cfg, data):
    """resnet10 (the default task's model) has no dropout, and neither a genome plan nor LoRA uses a
    value drawn from the global generator: the seeded training gives, bit for bit, what the training
    gave before, whatever state the global generator was in."""
    assert random_blocks(resnet10) == []
    trainer = Trainer(resnet10, cfg, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    plan = PLANS[name](resnet10, cfg.base_lr)
    train, val = data(32)

    def run() -> TrainResult:
        return trainer.train(plan, train, val, seed=7, data_key="d", keep_best_state=True)

    now = run()
    monkeypatch.setattr(training, "seed_global_rng", lambda seed, device: None)
    for state in (11, 12):
        scramble_global_rng(state)
        assert_same(now, run())


def test_lora_adapter_init_comes_from_its_seed(resnet10):
    """LoRA's A convs are drawn from ``compare.lora.init_seed`` (B starts at zero): the same seed gives
    the same adapters whatever the global generator holds, another seed other adapters."""

    def adapters(init_seed: int, global_state: int) -> list[torch.Tensor]:
        scramble_global_rng(global_state)
        model = build_model("resnet10", N_CLS, weights="none")
        wrappers, undo = add_lora(model, 2, 2.0, init_seed)
        out = [w.lora_A.weight.detach().clone() for w in wrappers]
        assert all(not w.lora_B.weight.any() for w in wrappers)
        undo()
        assert not any(isinstance(m, LoRAConv2d) for m in model.modules())
        return out

    a, b, c = adapters(0, 1), adapters(0, 2), adapters(1, 1)
    assert len(a) > 1
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not any(torch.equal(x, z) for x, z in zip(a, c))
