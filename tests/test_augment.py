"""``training.augment`` (issue 25, item 3): none / flip / standard with torchvision's v2 transforms on
the uint8 images on the device, every draw from the training's seed; the frozen-prefix cache only
where it stays exact (augmented training batches are recomputed, validation stays cached)."""

import pytest
import torch

from evotune.errors import ParameterError
from evotune.training import Augmenter, TrainConfig, TrainingPlan

pytestmark = pytest.mark.usefixtures("one_thread")

MEAN, STD = (0.3, 0.3, 0.3), (0.25, 0.25, 0.25)  # conftest make_trainer's


def _images(n=6, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)


def test_conf_base_and_the_paper_keep_no_augmentation(base_parameters, root):
    import yaml

    assert base_parameters()["training"]["augment"] == "none"
    paper = yaml.safe_load((root / "conf" / "paper" / "parameters_training.yml").read_text())
    assert paper["training"]["augment"] == "none"


def test_augment_is_validated(base_parameters):
    with pytest.raises(ParameterError, match="training.augment must be none, flip"):
        TrainConfig.from_params({**base_parameters()["training"], "augment": "randaugment"})


def test_flip_mirrors_some_images_and_leaves_the_others():
    x = _images(32)
    out = Augmenter("flip", seed=1)(x)
    flipped = [bool(torch.equal(o, i.flip(-1))) for o, i in zip(out, x)]
    kept = [bool(torch.equal(o, i)) for o, i in zip(out, x)]
    assert all(f or k for f, k in zip(flipped, kept))
    assert 0 < sum(flipped) < 32  # one draw per image


def test_standard_draws_per_image_from_the_seed_and_leaves_the_global_generator_alone():
    x = _images(1).expand(8, -1, -1, -1).contiguous()  # eight copies of one image
    before = torch.get_rng_state()
    a1 = Augmenter("standard", seed=3)
    first = [a1(x), a1(x)]
    assert torch.equal(torch.get_rng_state(), before)  # dropout's stream is not shifted
    a2 = Augmenter("standard", seed=3)
    second = [a2(x), a2(x)]
    for u, v in zip(first, second):
        assert torch.equal(u, v)  # reproducible from the seed, batch after batch
    assert not torch.equal(first[0], first[1])  # the state carries on between batches
    assert len({bytes(img.numpy()) for img in first[0]}) > 1  # each image its own crop
    other = Augmenter("standard", seed=4)(x)
    assert not torch.equal(other, first[0])
    assert first[0].dtype == torch.uint8 and first[0].shape == x.shape


def test_standard_training_is_reproducible_from_the_seed(make_trainer, data):
    plan = TrainingPlan(block_lrs=[1e-3] * 6)
    runs = []
    for augment, seed in (("standard", 7), ("standard", 7), ("none", 7)):
        trainer = make_trainer(epochs=2, augment=augment)
        train, val = data(trainer)
        res = trainer.train(plan, train, val, seed=seed, keep_best_state=True)
        runs.append(res)
    a, b, plain = runs
    assert [h["train_loss"] for h in a.history] == [h["train_loss"] for h in b.history]
    assert all(torch.equal(a.best_state[k], b.best_state[k]) for k in a.best_state)
    assert [h["train_loss"] for h in a.history] != [h["train_loss"] for h in plain.history]  # it does augment


def test_with_augmentation_the_frozen_prefix_of_training_batches_is_recomputed(make_trainer, data):
    """A cached prefix would hold the un-augmented images: with augmentation the training batches run
    the prefix at every step (no train entry in the cache) and the training equals the one without
    any cache; validation (never augmented) still uses its exact cached prefix."""
    plan = TrainingPlan(block_lrs=[None, None, None, 1e-3, 1e-3, 1e-3])  # a frozen prefix of 3 blocks
    cached = make_trainer(epochs=3, augment="standard", cache_frozen_prefix=True)
    train, val = data(cached)
    a = cached.train(plan, train, val, seed=5, data_key=("t",), keep_best_state=True)
    assert [key for key, _ in cached.cache._store] == [(("t",), "val")]  # validation only, no training batches
    assert cached.cache.hits > 0
    full = make_trainer(epochs=3, augment="standard", cache_frozen_prefix=False)
    b = full.train(plan, *data(full), seed=5, data_key=None, keep_best_state=True)
    assert [h["train_loss"] for h in a.history] == pytest.approx([h["train_loss"] for h in b.history], rel=1e-5)
    assert [h["val_macro_acc"] for h in a.history] == pytest.approx([h["val_macro_acc"] for h in b.history])
    for k in a.best_state:
        assert torch.allclose(a.best_state[k].float(), b.best_state[k].float(), atol=1e-4), k
    # without augmentation the same plan caches the training prefix too
    plain = make_trainer(epochs=1, augment="none", cache_frozen_prefix=True)
    plain.train(plan, *data(plain), seed=5, data_key=("t",))
    assert sorted(key[1] for key, _ in plain.cache._store) == ["train", "val"]


def test_the_naive_reference_loop_refuses_augmentation(train_config):
    from evotune.reference import naive_train

    cfg = train_config(augment="flip", device="cpu")
    with pytest.raises(ValueError, match="no augmentation"):
        naive_train(None, TrainingPlan(block_lrs=[1e-3] * 6), [], [], [], [], cfg, seed=0, resize_size=32,
                    crop_size=32, mean=MEAN, std=STD)
