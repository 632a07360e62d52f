"""The CUDA path (issue 16): every test here is marked ``cuda`` and skipped without a GPU.

``scripts/device_check.sh`` runs exactly these (``pytest -m cuda``) on a GPU machine. What
they check:

* each training method (the seven fixed recipes of the comparison and a BioTune genome; the
  search baselines train genome plans, the same code as the genome) trains on CUDA and
  agrees with the same training on CPU. Compared in float32 (``amp: false``) with cuDNN's
  deterministic algorithms and TF32 off; channels-last stays on (``auto``), so its kernels
  are part of what is compared. Tolerances: per-epoch training losses within 1 % (+ 5e-3),
  at least 90 % of the validation predictions equal, frozen tensors bit for bit unchanged,
  and each trained tensor's update (trained - pretrained) equal within 10 % of its norm.
  Why not tighter: GPU and CPU float32 sum in different orders (about 1e-6 relative per
  reduction), and Adam turns a sign flip of a near-zero gradient element into a whole step
  of that element's learning rate; over 8 steps a few elements drift by up to 1e-2 (measured
  on CPU between contiguous and channels-last float32: losses 1 % apart after two epochs,
  10 of 589,824 elements of a conv 8e-3 apart). A wrong learning rate, a frozen block that
  trains or a hook on the wrong device changes an update by far more than 10 %;
* the default CUDA setting (bf16 autocast + channels-last) trains: finite losses and
  validation accuracy far above chance on an easy task (bf16 keeps 8 bits of mantissa, so
  it is not compared with float32 to a tolerance);
* the frozen-prefix cache on CUDA: cached features live on the GPU and training with the
  cache equals training with the full forward;
* a search killed with SIGKILL and resumed, on CUDA, equals an uninterrupted one;
* the benchmark's flowers preset (ResNet-50, 224 px) runs on CUDA (small sizes).
"""

from __future__ import annotations

import copy
import functools
import json
import os
import signal
import time
from pathlib import Path

import pytest
import torch

from evotune.backbones import build_model
from evotune.methods import PLAN_METHODS, get_method
from evotune.search.evaluator import genome_plan
from evotune.training import DeviceData, Trainer, TrainingPlan

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)"),
]

ROOT = Path(__file__).resolve().parents[1]
MEAN, STD = (0.3, 0.3, 0.3), (0.25, 0.25, 0.25)
BASE_LR = 1e-3
#: CUDA vs CPU float32: a trained tensor's update (trained - pretrained) may differ by this share of its norm
UPDATE_RTOL = 0.1


@pytest.fixture
def deterministic_cuda():
    """cuDNN's deterministic algorithms, no TF32: float32 on the GPU as close to the CPU as it gets."""
    saved = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
             torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
     torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) = saved


@functools.cache
def _compare_defaults() -> dict:
    """conf/base's `compare` parameters, read here and not from a fixture: the parametrisation over
    the methods' labels (:func:`_labels`) happens at collection, before fixtures exist."""
    from evotune.config import ProjectConfigLoader

    return ProjectConfigLoader(str(ROOT / "conf"), base_env="base", default_run_env="base")["parameters"]["compare"]


def compare_params(name: str) -> dict:
    """The method's parameters as conf/base sets them (the one source of defaults)."""
    return copy.deepcopy(_compare_defaults()[name])


@pytest.fixture(scope="module")
def trainer_on(train_config):
    """``trainer_on(device, model, **cfg)``: a Trainer of a copy of ``model`` on conf/base's training."""
    def make(device: str, model, **cfg) -> Trainer:
        base = dict(epochs=2, patience=5, batch_size=8, eval_batch_size=32, device=device, base_lr=BASE_LR)
        return Trainer(copy.deepcopy(model), train_config(**{**base, **cfg}), mean=MEAN, std=STD)

    return make


@pytest.fixture(scope="module")
def split_data(make_split):
    """``split_data(trainer, classes=4)``: tiny train and val data on the trainer's device."""
    def make(trainer: Trainer, classes: int = 4):
        return (DeviceData.from_split(make_split(8, classes, seed=0), trainer.device),
                DeviceData.from_split(make_split(4, classes, seed=1), trainer.device))

    return make


def method_plans(model):
    """(label, plan factory) for every plan method (one variant each) and a BioTune genome."""
    out = []
    for name in sorted(PLAN_METHODS):
        method = get_method(name)
        variants = method.variants(model, **compare_params(name))
        label, params = variants[len(variants) // 2]  # surgical: a middle block
        out.append((label, lambda m, method=method, params=params: method.plan(m, BASE_LR, **params)))
    genes = [0.1, 0.2, 0.6, 0.8, 0.45, 0.7, 0.3]  # stem + layer1 frozen: a frozen prefix, uneven rates
    out.append(("biotune_genome", lambda m: genome_plan(genes, BASE_LR, name="genome")))
    return out


def _labels():
    torch.manual_seed(0)
    return [label for label, _ in method_plans(build_model("resnet10", 4))]


@pytest.mark.parametrize("label", _labels())
def test_each_method_trains_on_cuda_as_on_cpu(label, deterministic_cuda, trainer_on, split_data):
    torch.manual_seed(0)
    model = build_model("resnet10", 4)
    plan_of = dict(method_plans(model))[label]
    pristine = {k: v.detach().clone() for k, v in model.state_dict().items()}
    runs = {}
    for device in ("cpu", "cuda"):
        trainer = trainer_on(device, model, amp=False)
        train, val = split_data(trainer)
        plan = plan_of(trainer.model)
        res = trainer.train(plan, train, val, seed=3, data_key=("d", 0), keep_best_state=True)
        pred = trainer.predict(val).cpu()
        runs[device] = (res, pred, {k: v.detach().cpu() for k, v in trainer.model.state_dict().items()})
        if device == "cuda":
            assert trainer.channels_last and not trainer.amp
            assert all(p.device.type == "cuda" for p in trainer.model.parameters())
    (rc, pc, sc), (rg, pg, sg) = runs["cpu"], runs["cuda"]
    assert not rc.diverged and not rg.diverged
    assert rg.epochs_run == rc.epochs_run
    assert [h["train_loss"] for h in rg.history] == pytest.approx([h["train_loss"] for h in rc.history],
                                                                  rel=1e-2, abs=5e-3)
    assert (pg == pc).float().mean().item() >= 0.9
    assert sg.keys() == sc.keys()
    worst = 0.0
    for k, v in sc.items():
        if not v.is_floating_point():
            assert torch.equal(sg[k], v), k  # e.g. batch-norm's num_batches_tracked
            continue
        moved_cpu, moved_gpu = v - pristine[k], sg[k] - pristine[k]
        if not moved_cpu.any():  # frozen on CPU: untouched on CUDA too, bit for bit
            assert not moved_gpu.any(), f"{label} {k}: frozen on CPU, changed on CUDA"
            continue
        # the update (trained - pretrained) agrees within 10 % of its norm
        ratio = ((moved_gpu - moved_cpu).norm() / moved_cpu.norm()).item()
        worst = max(worst, ratio)
        assert ratio <= UPDATE_RTOL, f"{label} {k}: CUDA and CPU updates differ by {ratio:.3f} of their norm"
    print(f"{label}: largest relative difference of a tensor's update {worst:.4f}")


def test_bf16_autocast_and_channels_last_train_on_cuda(trainer_on, split_data):
    """The default CUDA setting: bf16 autocast and channels-last, on an easy 4-class task."""
    torch.manual_seed(0)
    model = build_model("resnet10", 4)
    trainer = trainer_on("cuda", model, epochs=6, amp="auto", channels_last="auto")
    assert trainer.amp and trainer.channels_last
    conv = next(m for m in trainer.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    train, val = split_data(trainer)
    res = trainer.train(TrainingPlan(block_lrs=[BASE_LR] * 6), train, val, seed=7)
    losses = [h["train_loss"] for h in res.history]
    assert not res.diverged and all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]
    assert res.best_val_acc >= 0.75  # chance is 0.25
    # a frozen prefix under autocast: its cached features are bf16 on the GPU
    plan = TrainingPlan(block_lrs=[None, None, BASE_LR, BASE_LR, BASE_LR, BASE_LR])
    res = trainer.train(plan, train, val, seed=7, data_key=("amp", 0))
    assert not res.diverged and res.best_val_acc >= 0.75
    feats = next(iter(trainer.cache._store.values()))
    assert feats.device.type == "cuda" and feats.dtype == torch.bfloat16


def test_prefix_cache_on_cuda_equals_the_full_forward(deterministic_cuda, trainer_on, split_data):
    torch.manual_seed(0)
    model = build_model("resnet10", 4)
    plan = TrainingPlan(block_lrs=[None, None, None, BASE_LR, BASE_LR, BASE_LR])
    results = []
    for cache in (True, False):
        trainer = trainer_on("cuda", model, epochs=3, amp=False, cache_frozen_prefix=cache)
        train, val = split_data(trainer)
        res = trainer.train(plan, train, val, seed=5, data_key=("t",) if cache else None, keep_best_state=True)
        results.append((res, trainer))
    (a, ta), (b, tb) = results
    assert ta.cache.misses > 0 and ta.cache.hits > 0 and tb.cache.misses == 0
    assert all(t.device.type == "cuda" for t in ta.cache._store.values())
    assert [h["val_macro_acc"] for h in a.history] == pytest.approx([h["val_macro_acc"] for h in b.history])
    assert [h["train_loss"] for h in a.history] == pytest.approx([h["train_loss"] for h in b.history], rel=1e-4)
    for k in a.best_state:
        assert torch.allclose(a.best_state[k].float(), b.best_state[k].float(), atol=1e-4), k
    # predictions through the cache equal a plain full forward of the same weights
    fast = ta.predict(split_data(ta)[1], plan=plan, data_key=(("t",), "val"))
    ta.model.eval()
    with torch.no_grad():
        plain = ta.model(ta.normalize(split_data(ta)[1].images)).argmax(1)
    assert torch.equal(fast, plain)


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_search_killed_with_sigkill_resumes_on_cuda(tmp_path, monkeypatch, deterministic_cuda, base_parameters, make_split,
                                                   backbone_checkpoint):
    """As tests/test_search_survival.py, on CUDA with the default bf16 autocast + channels-last.

    Both processes use cuDNN's deterministic algorithms (EVOTUNE_TEST_DETERMINISTIC), so the
    resumed search, the killed one and an uninterrupted one compute the same trainings.
    """
    import test_search_survival as survival

    from evotune.pipelines.search.nodes import run_search

    monkeypatch.setattr(survival, "TRAINING", {**survival.TRAINING, "device": "cuda"})
    monkeypatch.setenv("EVOTUNE_TEST_DETERMINISTIC", "1")
    storage = f"sqlite:///{tmp_path}/study.db"
    d, path = survival.make_inputs(tmp_path, storage, base_parameters(), make_split, backbone_checkpoint)
    assert d["training"]["device"] == "cuda"
    proc = survival.spawn("search", path)
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None and len(survival.trainings(storage)) < 3:
        time.sleep(0.2)
    assert proc.poll() is None, "the search ended before it was killed: " + proc.err_path.read_text()[-2000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = survival.trained_once(survival.trainings(storage))
    assert len(done_before) >= 3
    assert {run["device"] for run in done_before.values()} <= {"cuda", "cuda:0"}

    trials, _, best = run_search(*survival.run_args(d))
    after = survival.trained_once(survival.trainings(storage))  # a finished training was never repeated
    for uid, run in done_before.items():
        assert after[uid] == run
    mem = dict(d, storage=None)
    ref_trials, _, ref_best = run_search(*survival.run_args(mem))
    assert trials["fitness"].tolist() == pytest.approx(ref_trials["fitness"].tolist())
    assert best.genes == ref_best.genes


@pytest.mark.timeout(400)
def test_benchmark_flowers_preset_on_cuda(tmp_path):
    from test_scripts import run_script

    out = tmp_path / "bench.json"
    run_script("benchmark_evaluation.py", "--preset", "flowers", "--device", "cuda", "--classes", "4",
               "--n-train", "4", "--n-val", "2", "--epochs", "1", "--seeds", "684", "559", "--weights", "random",
               "--out", str(out))
    result = json.loads(out.read_text())
    assert result["machine"]["gpu"] and result["machine"]["device"].startswith("cuda")
    assert result["settings"]["fast_amp"] and result["settings"]["fast_channels_last"]
    assert result["settings"]["naive_seeds"] == [684]  # the preset's naive loop runs the first seed only
    rows = {(r["genome"], r["path"]): r for r in result["table"]}
    for genome in ("all", "head", "mixed"):
        assert rows[(genome, "fast")]["evaluations"] == 2 and rows[(genome, "naive")]["evaluations"] == 1
        assert rows[(genome, "fast")]["speedup_evals_per_hour"] > 0
    assert all("val_pass_s" in e for e in result["evaluations"] if e["path"] == "fast")
    assert os.path.getsize(out) > 0
