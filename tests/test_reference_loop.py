"""The fast training path and the naive reference loop compute the same thing.

``evotune.training.Trainer`` (uint8 data decoded once, frozen-prefix cache, pristine
weights kept in memory) against ``evotune.reference`` (PIL decode + resize + crop +
normalise every epoch, DataLoader, full forward, model rebuilt from the checkpoint
file per evaluation), on CPU, on tiny PIL-generated data with resnet10.

Tolerances. On CPU both paths run the same float32 operations in the same order, with
one exception: the fast path computes a frozen prefix once, in ``eval_batch_size``
batches of the unshuffled images, while the naive loop recomputes it inside each
shuffled training batch. A convolution library may pick a different kernel for a
different batch shape, so per-image prefix outputs may differ in the last bits. Today
they are bit-identical here, but the checks allow that rounding: logits to 1e-4,
losses to 1e-4 relative, weights to 1e-4, and each epoch's validation macro accuracy
to at most one validation image's share (a rounding-level difference can flip at
most a borderline prediction). Predicted classes must be identical.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import evotune.reference as reference
from evotune.backbones import build_model, load_checkpoint, make_checkpoint, model_from_checkpoint
from evotune.reference import decode_once, encode_png, naive_predict, naive_train
from evotune.search.evaluator import genome_plan
from evotune.training import DeviceData, Trainer, apply_freezing

N_CLS = 4
MEAN, STD = (0.3, 0.3, 0.3), (0.25, 0.25, 0.25)
RESIZE, CROP = 36, 32  # 40 px images, shorter side resized to 36, centre crop 32
# Both loops use torch's default (plain) Adam here, so that they compare like with like: the
# fused kernel rounds differently, and how far the two drift apart over a training depends on
# the CPU (AVX2 vs AVX-512). test_training.py checks fused against plain Adam on its own.
TRAINING = {"epochs": 3, "patience": 5, "batch_size": 16, "eval_batch_size": 32, "device": "cpu", "fused_optimizer": False}

GENOMES = {
    # stem + layer1 frozen (a 2-block cached prefix), the rest trained at varied lrs
    "mixed": [0.1, 0.2, 0.6, 0.8, 0.45, 0.7, 0.3],
    # linear probing: the whole backbone is a cached prefix
    "head": [0.0, 0.0, 0.0, 0.0, 0.0, 0.5, 0.25],
    # full fine-tuning: nothing cached, every batch-norm in train mode
    "all": [0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.0],
}


def pil_images(n: int, seed: int) -> tuple[list[Image.Image], list[int]]:
    """Class k: a bright horizontal band at a class-specific height, plus noise."""
    r = np.random.default_rng(seed)
    images, labels = [], []
    for i in range(n):
        y = i % N_CLS
        a = (r.random((40, 40, 3)) * 90).astype(np.uint8)
        a[y * 10 : y * 10 + 10, :, :] += np.uint8(r.integers(40, 150))
        images.append(Image.fromarray(a))
        labels.append(y)
    return images, labels


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors (conftest)


@pytest.fixture(scope="module")
def train_cfg(train_config):
    """conf/base's training with :data:`TRAINING`."""
    return train_config(**TRAINING)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model("resnet10", N_CLS)
    # non-trivial batch-norm statistics, so that eval-mode blocks matter
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) * 0.4 - 0.2)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    torch.save(make_checkpoint(model, num_classes=N_CLS, input_size=CROP, resize_size=RESIZE, mean=MEAN, std=STD,
                               source="test").to_dict(), path)
    train_pil, ytr = pil_images(40, seed=0)
    val_pil, yva = pil_images(20, seed=1)
    # the naive loop decodes encoded images every epoch: PNG bytes for train, files for val
    train_items = encode_png(torch.stack([torch.from_numpy(np.array(im)).permute(2, 0, 1) for im in train_pil]))
    val_dir = tmp_path_factory.mktemp("val")
    val_items = []
    for i, im in enumerate(val_pil):
        im.save(val_dir / f"{i}.png")
        val_items.append(str(val_dir / f"{i}.png"))
    return {"ckpt": path, "train_items": train_items, "ytr": ytr, "val_items": val_items, "yva": yva,
            # the fast path's data: decoded, resized and cropped once, as uint8
            "train": DeviceData(decode_once(train_pil, resize_size=RESIZE, crop_size=CROP), torch.tensor(ytr), N_CLS),
            "val": DeviceData(decode_once(val_pil, resize_size=RESIZE, crop_size=CROP), torch.tensor(yva), N_CLS)}


def fast_trainer(setup, cfg) -> Trainer:
    return Trainer(model_from_checkpoint(load_checkpoint(setup["ckpt"]), N_CLS), cfg, mean=MEAN, std=STD)


def naive_kw():
    return dict(resize_size=RESIZE, crop_size=CROP, mean=MEAN, std=STD, num_classes=N_CLS, device="cpu")


def test_same_predictions_for_the_same_weights(setup, train_cfg):
    trainer = fast_trainer(setup, train_cfg)
    plan = genome_plan(GENOMES["mixed"], train_cfg.base_lr)
    apply_freezing(trainer.model, plan)  # as during a search: the frozen prefix is cacheable
    assert plan.frozen_prefix(trainer.model, train_cfg.frozen_bn) == 2 and train_cfg.frozen_bn == "eval"
    assert plan.frozen_prefix(trainer.model, "train") == 0  # the stem's batch norm follows train mode there
    cached = trainer.predict(setup["val"], plan=plan, data_key="val")
    cached_again = trainer.predict(setup["val"], plan=plan, data_key="val")
    assert (trainer.cache.misses, trainer.cache.hits) == (1, 1), "the prefix cache was not used"
    full = trainer.predict(setup["val"])

    preds, logits = naive_predict(setup["ckpt"], setup["val_items"], train_cfg, return_logits=True, **naive_kw())
    assert torch.equal(cached, preds) and torch.equal(cached_again, preds) and torch.equal(full, preds)
    assert len(set(preds.tolist())) > 1, "degenerate test: one class predicted for every image"
    trainer.model.eval()
    with torch.no_grad():
        fast_logits = trainer.model(trainer.normalize(setup["val"].images))
    torch.testing.assert_close(fast_logits, logits, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("genome,frozen_bn", [(genome, "eval") for genome in GENOMES]
                         + [("mixed", "train"), ("head", "train")])  # "all" freezes nothing: the same under both
def test_training_gives_the_same_history(setup, genome, frozen_bn, train_cfg):
    """Under both batch-norm policies (training.frozen_bn): under ``train`` the frozen blocks' batch norm
    follows train mode in both loops, and the fast path runs the frozen blocks every step (no cache)."""
    train_cfg = train_cfg.replace(frozen_bn=frozen_bn)
    plan = genome_plan(GENOMES[genome], train_cfg.base_lr)
    trainer = fast_trainer(setup, train_cfg)
    fast = trainer.train(plan, setup["train"], setup["val"], seed=684, data_key=("t", genome), keep_best_state=True)
    naive = naive_train(setup["ckpt"], plan, setup["train_items"], setup["ytr"], setup["val_items"], setup["yva"],
                        train_cfg, seed=684, keep_best_state=True, **naive_kw())
    if genome != "all" and frozen_bn == "eval":
        assert trainer.cache.misses >= 1, "the fast path did not use its frozen-prefix cache"
    if frozen_bn == "train":  # resnet10's stem holds batch norm: nothing may be cached
        assert (trainer.cache.misses, trainer.cache.hits) == (0, 0)
        stem_bn = "stages.0.bn1.running_mean"
        assert not torch.equal(naive.best_state[stem_bn], trainer.pristine[stem_bn].cpu())  # frozen, yet adapted

    one_image = N_CLS / len(setup["yva"])  # macro accuracy moved by one validation image (5 per class)
    assert fast.epochs_run == naive.epochs_run == train_cfg.epochs
    for f, n in zip(fast.history, naive.history):
        assert f["epoch"] == n["epoch"]
        assert f["train_loss"] == pytest.approx(n["train_loss"], rel=1e-4, abs=1e-6)
        assert abs(f["val_macro_acc"] - n["val_macro_acc"]) <= one_image + 1e-9
    assert abs(fast.best_val_acc - naive.best_val_acc) <= one_image + 1e-9
    for k, v in fast.best_state.items():
        torch.testing.assert_close(v.float(), naive.best_state[k].float(), atol=1e-4, rtol=1e-4, msg=k)
    # a trained run must actually have moved away from the checkpoint
    assert naive.history[0]["train_loss"] > naive.history[-1]["train_loss"]


def test_early_stopping_seeds_and_per_epoch_decoding(setup, monkeypatch, train_cfg):
    """Same early stop; the seed changes head and order; the naive loop decodes every epoch."""
    cfg = train_cfg.replace(epochs=4, patience=1, base_lr=0.05)
    plan = genome_plan(GENOMES["mixed"], cfg.base_lr)
    fast = fast_trainer(setup, cfg).train(plan, setup["train"], setup["val"], seed=559, data_key="k")

    calls = []
    real = reference.decode_image
    monkeypatch.setattr(reference, "decode_image", lambda item: calls.append(1) or real(item))
    args = (setup["ckpt"], plan, setup["train_items"], setup["ytr"], setup["val_items"], setup["yva"], cfg)
    naive = naive_train(*args, seed=559, **naive_kw())
    assert naive.epochs_run == fast.epochs_run
    assert [h["val_macro_acc"] for h in naive.history] == pytest.approx(
        [h["val_macro_acc"] for h in fast.history], abs=N_CLS / len(setup["yva"]) + 1e-9)
    assert naive.train_images == naive.epochs_run * len(setup["ytr"])
    assert len(calls) == naive.epochs_run * (len(setup["ytr"]) + len(setup["yva"]))

    other = naive_train(*args, seed=629, **naive_kw())
    assert other.history[0]["train_loss"] != naive.history[0]["train_loss"]
