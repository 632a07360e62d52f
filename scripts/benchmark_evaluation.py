#!/usr/bin/env python
"""Time genome evaluations: the project's fast path against the naive reference loop.

Both paths train the same genomes on the same images with the same seeds, in the
same process, interleaved (for each genome, seed and repeat: fast, then naive):

* **fast**: one :class:`evotune.training.Trainer` reused across every evaluation, as
  the search uses it: images decoded/resized once and held as uint8 tensors on the
  device, pristine weights restored in memory, frozen-prefix cache, and on CUDA bf16
  autocast + channels-last.
* **naive**: :func:`evotune.reference.naive_train`: the model rebuilt from the
  checkpoint file for every evaluation, a Dataset that decodes + resizes + crops +
  normalises every image every epoch, a DataLoader (num_workers=0), a full float32
  forward every step.

Every evaluation is counted. In particular the first fast evaluation of a genome with
a frozen prefix includes building that prefix's cache (column ``first_s``); the
evaluations after it reuse it, as in a search. One-off costs outside the evaluations
(the fast path's one-time decoding and upload, building the Trainer) are printed
separately. Before timing, each path runs one short untimed warm-up training (library
and kernel initialisation; it does not build any prefix cache).

Presets
-------
``embedded`` (default, CPU-sized): resnet10 at 32 px pretrained on the rendered printed
characters (source task; pretrained here for a couple of epochs unless ``--checkpoint``
points at one, e.g. ``data/06_models/source_model.pt/<version>/source_model.pt``);
target: scikit-learn's handwritten digits, 10 train / 5 validation images per class.

``flowers`` (GPU-sized): resnet50 at 224 px (resize 232), ImageNet weights when they
are in the local torch hub cache (else random), 102 classes of synthetic
Flowers-102-shaped JPEGs (about 500 x 375-667 px), 10 train / 5 validation per class
(1,020 / 510 images).

Examples::

    python scripts/benchmark_evaluation.py                      # embedded, CPU/GPU auto
    python scripts/benchmark_evaluation.py --preset flowers --device cuda --epochs 5 \\
        --seeds 684 559 629 --out results.json
    python scripts/benchmark_evaluation.py --epochs 1 --n-train 2 --n-val 1 --pretrain-per-class 10
    python scripts/benchmark_evaluation.py --preset flowers --classes 8 --n-train 2 --n-val 1 --epochs 1
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import platform
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:  # runnable without installing the package
    sys.path.insert(0, str(ROOT / "src"))

from evotune.backbones import (  # noqa: E402
    BackboneWeightsError,
    build_model,
    get_arch,
    load_checkpoint,
    make_checkpoint,
    model_from_checkpoint,
)
from evotune.genome import decode, random_genome  # noqa: E402
from evotune.machine import avx512_label, cpu_facts  # noqa: E402
from evotune.reference import decode_once, encode_png, naive_train  # noqa: E402
from evotune.search.evaluator import genome_plan  # noqa: E402
from evotune.training import (  # noqa: E402
    DeviceData,
    TrainConfig,
    Trainer,
    TrainingPlan,
    apply_freezing,
    default_param_groups,
    device_setting,
    make_optimizer,
    plan_loss,
    resolve_device,
    set_block_modes,
)

#: resnet blocks: stem, layer1, layer2, layer3, layer4, fc; + threshold gene
GENOMES: dict[str, list[float]] = {
    # every block at the base lr (gene 0.5 -> 1x), threshold 0
    "all": [0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.0],
    # linear probing: only the head, at the base lr
    "head": [0.0, 0.0, 0.0, 0.0, 0.0, 0.5, 0.25],
    # typical mixed genome: stem + layer1 frozen, layer2..fc at 1.6x, 4x, 0.8x, 2.5x
    "mixed": [0.1, 0.2, 0.6, 0.8, 0.45, 0.7, 0.3],
}

#: naive_seeds: how many of ``--seeds`` the naive loop runs (None: all). Every evaluation runs
#: every epoch (patience = epochs), so its time does not depend on the seed; on a GPU the
#: flowers preset's naive loop (JPEG decoding on one CPU core, about 10x the fast path) would
#: otherwise take most of the device check's 8 minutes.
PRESETS = {
    "embedded": dict(arch="resnet10", epochs=5, batch_size=32, eval_batch_size=256, n_train=10, n_val=5,
                     naive_seeds=None),
    "flowers": dict(arch="resnet50", epochs=3, batch_size=96, eval_batch_size=64, n_train=10, n_val=5,
                    classes=102, naive_seeds=1),
}


# --------------------------------------------------------------------------- machine


def base_training_config(**overrides) -> TrainConfig:
    """conf/base's `training` parameters (the project's defaults) with this benchmark's settings."""
    from evotune.config import load_parameters

    return TrainConfig.from_params({**load_parameters(ROOT / "conf")["training"], **overrides})


def machine_info(device: torch.device) -> dict:
    import torchvision

    info = {
        **cpu_facts(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "gpu": None,
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------- data


def stratified_take(labels: np.ndarray, n_train: int, n_val: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Per class: ``n_train`` indices for training and the next ``n_val`` for validation."""
    rng = np.random.default_rng(seed)
    tr, va = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        if len(idx) < n_train + n_val:
            raise ValueError(f"class {c} has {len(idx)} images, {n_train + n_val} needed")
        tr += idx[:n_train].tolist()
        va += idx[n_train : n_train + n_val].tolist()
    return np.array(sorted(tr)), np.array(sorted(va))


def _as_uint8_nchw(images) -> torch.Tensor:
    x = torch.as_tensor(np.asarray(images)) if not isinstance(images, torch.Tensor) else images
    if x.dtype != torch.uint8:
        x = x.float()
        x = (x * (255.0 / max(float(x.max()), 1e-12))).round().clamp(0, 255).to(torch.uint8)
    if x.dim() == 3:  # [N, H, W] grey
        x = x[:, None]
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return x.contiguous()


def load_digits_split() -> dict:
    """The embedded target: ``evotune.data.embedded.load_handwritten_digits`` (sklearn's 8x8 digits,
    uint8 RGB at their native size; both paths resize them to the model's input size)."""
    try:
        from evotune.data.embedded import load_handwritten_digits
    except ImportError:
        print("note: evotune.data.embedded is not importable; using sklearn's digits directly")
        from sklearn.datasets import load_digits

        d = load_digits()
        ink = torch.from_numpy(d.images * (255.0 / 16.0)).round().clamp(0, 255).to(torch.uint8)
        return {"images": _as_uint8_nchw(255 - ink), "labels": torch.from_numpy(d.target).long(),
                "classes": [str(i) for i in range(10)]}
    data = load_handwritten_digits()
    if isinstance(data, dict):
        images, labels, classes = data["images"], data["labels"], data["classes"]
    else:
        images, labels, classes = data
    return {"images": _as_uint8_nchw(images), "labels": torch.as_tensor(labels).long(), "classes": list(classes)}


def synthetic_flowers(n_classes: int, n_per_class: int, seed: int) -> tuple[list[bytes], list[int]]:
    """Flowers-102-shaped JPEGs: 500 px wide, 375-667 px high, a class-coloured 'flower'
    (petals around a centre) on a textured background, plus noise."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    palette = np.random.default_rng(12345).integers(30, 255, size=(n_classes, 2, 3))
    petals = np.random.default_rng(54321).integers(4, 12, size=n_classes)
    items, labels = [], []
    for c in range(n_classes):
        for _ in range(n_per_class):
            h = int(rng.integers(375, 668))
            w = 500
            lh, lw = h // 8, w // 8
            yy, xx = np.mgrid[0:lh, 0:lw].astype(np.float32)
            cy, cx = lh * rng.uniform(0.35, 0.65), lw * rng.uniform(0.35, 0.65)
            r = np.hypot(yy - cy, xx - cx)
            ang = np.arctan2(yy - cy, xx - cx) + rng.uniform(0, 2 * np.pi)
            radius = min(lh, lw) * rng.uniform(0.25, 0.4) * (0.7 + 0.3 * np.cos(petals[c] * ang))
            mask = (r < radius).astype(np.float32)[..., None]
            centre = (r < radius * 0.25).astype(np.float32)[..., None]
            bg = rng.uniform(20, 120, size=(1, 1, 3)) + rng.normal(0, 25, size=(lh, lw, 3))
            img = bg * (1 - mask) + palette[c, 0] * mask * (1 - centre) + palette[c, 1] * centre
            small = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
            big = np.asarray(small.resize((w, h), Image.BICUBIC), dtype=np.float32)
            big = np.clip(big + rng.normal(0, 8, size=big.shape), 0, 255).astype(np.uint8)
            buf = io.BytesIO()
            Image.fromarray(big).save(buf, format="JPEG", quality=90)
            items.append(buf.getvalue())
            labels.append(c)
    return items, labels


# --------------------------------------------------------------------------- models


def pretrain_embedded_checkpoint(path: Path, args, device: torch.device) -> None:
    """A quick source-pretrained resnet10: all blocks on rendered printed characters."""
    from evotune.data.embedded import render_printed_characters

    t0 = time.perf_counter()
    data = render_printed_characters(int(args.pretrain_per_class), image_size=32, seed=0)
    images = _as_uint8_nchw(data.images)
    labels = torch.as_tensor(data.labels).long()
    n_cls = len(data.classes)
    x = images.float().div(255.0)
    mean = x.mean(dim=(0, 2, 3)).tolist()
    std = x.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist()
    torch.manual_seed(0)
    model = build_model("resnet10", n_cls, weights=None)
    cfg = base_training_config(epochs=int(args.pretrain_epochs), patience=100, batch_size=128, eval_batch_size=512,
                               base_lr=2e-3, cosine_t_max=max(int(args.pretrain_epochs), 1))
    trainer = Trainer(model, cfg, mean=mean, std=std, device=device)
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    n_val = max(len(labels) // 10, n_cls)
    val = DeviceData(images[perm[:n_val]].to(device), labels[perm[:n_val]].to(device), n_cls)
    train = DeviceData(images[perm[n_val:]].to(device), labels[perm[n_val:]].to(device), n_cls)
    res = trainer.train(TrainingPlan([cfg.base_lr] * model.num_blocks, name="source"), train, val, seed=0,
                        keep_best_state=True)
    trainer.model.load_state_dict(res.best_state)
    ckpt = make_checkpoint(trainer.model.cpu(), num_classes=n_cls, input_size=32, resize_size=32, mean=mean,
                           std=std, source="printed characters (benchmark_evaluation.py quick pretraining)",
                           extra={"source_val_macro_acc": float(res.best_val_acc)})
    torch.save(ckpt.to_dict(), path)
    print(f"pretrained resnet10 on {len(train)} printed characters ({n_cls} classes), {res.epochs_run} epochs: "
          f"source val macro acc {res.best_val_acc:.3f} ({time.perf_counter() - t0:.1f}s) -> {path}")


def flowers_checkpoint(path: Path, args, n_cls: int) -> str:
    spec = get_arch("resnet50")
    weights = args.weights
    model = None
    if weights in ("auto", "imagenet"):
        try:
            model = build_model("resnet50", n_cls, weights="imagenet")
            weights = "imagenet"
        except BackboneWeightsError as exc:
            if args.weights == "imagenet":
                raise
            print(f"note: no cached ImageNet weights ({str(exc).splitlines()[0][:100]}...); random init")
    if model is None:
        torch.manual_seed(0)
        model = build_model("resnet50", n_cls, weights=None)
        weights = "random"
    torch.save(make_checkpoint(model, num_classes=n_cls, input_size=spec.input_size, resize_size=spec.resize_size,
                               mean=spec.mean, std=spec.std, source=f"resnet50 {weights}").to_dict(), path)
    return weights


# --------------------------------------------------------------------------- benchmark


def prepare(args, device: torch.device, workdir: Path) -> dict:
    """Checkpoint file, encoded images for the naive loop, sizes and normalisation."""
    p = PRESETS[args.preset]
    n_train = args.n_train if args.n_train is not None else p["n_train"]
    n_val = args.n_val if args.n_val is not None else p["n_val"]
    if args.preset == "embedded":
        if args.checkpoint:
            ckpt_path = Path(args.checkpoint)
            weights = f"checkpoint {ckpt_path}"
        else:
            ckpt_path = workdir / "source_model.pt"
            pretrain_embedded_checkpoint(ckpt_path, args, device)
            weights = "quick source pretraining"
        ckpt = load_checkpoint(ckpt_path)
        if ckpt.arch != "resnet10":
            print(f"note: checkpoint architecture is {ckpt.arch}")
        digits = load_digits_split()
        labels = digits["labels"].numpy()
        tr, va = stratified_take(labels, n_train, n_val, seed=0)
        # the naive loop gets the images as PNG files' bytes at their native size
        train_items, val_items = encode_png(digits["images"][tr]), encode_png(digits["images"][va])
        ytr, yva = labels[tr].tolist(), labels[va].tolist()
        n_cls = len(digits["classes"])
        resize, crop = int(ckpt.resize_size), int(ckpt.input_size)
        mean, std = list(ckpt.mean), list(ckpt.std)
        arch = str(ckpt.arch)
    else:
        n_cls = args.classes or p["classes"]
        ckpt_path = Path(args.checkpoint) if args.checkpoint else workdir / "resnet50.pt"
        weights = f"checkpoint {ckpt_path}" if args.checkpoint else flowers_checkpoint(ckpt_path, args, n_cls)
        t0 = time.perf_counter()
        train_items, ytr = synthetic_flowers(n_cls, n_train, seed=1)
        val_items, yva = synthetic_flowers(n_cls, n_val, seed=2)
        print(f"generated {len(train_items)} + {len(val_items)} synthetic JPEGs ({time.perf_counter() - t0:.1f}s)")
        ckpt = load_checkpoint(ckpt_path)
        resize, crop = int(ckpt.resize_size), int(ckpt.input_size)
        mean, std = list(ckpt.mean), list(ckpt.std)
        arch = str(ckpt.arch)
    return dict(ckpt_path=ckpt_path, weights=weights, arch=arch, n_cls=n_cls, train_items=train_items,
                val_items=val_items, ytr=ytr, yva=yva, resize=resize, crop=crop, mean=mean, std=std)


def compute_floor(trainer: Trainer, plan: TrainingPlan, train: DeviceData, steps: int = 8) -> float:
    """Seconds per training image of the genome's irreducible work: the trained blocks'
    forward and backward and the optimizer step, on one full batch of the frozen prefix's
    outputs already in memory (no data handling, no validation, no Python loop around it).

    ``naive s/eval / (floor x images)`` bounds the ratio any implementation computing the
    same updates can reach against the naive loop on this machine.
    """
    model, cfg = trainer.model, trainer.cfg
    trainer.reset(0)
    apply_freezing(model, plan)
    prefix = plan.frozen_prefix(model, cfg.frozen_bn)
    bs = min(cfg.batch_size, len(train))
    with torch.no_grad(), trainer._autocast():
        model.eval()
        x = trainer.normalize(train.images[:bs])
        x = model.forward_until(prefix, x) if prefix else x
    y = train.labels[:bs]
    opt = make_optimizer(default_param_groups(model, plan.block_lrs), cfg)
    set_block_modes(model, plan, True, cfg.frozen_bn)

    def step() -> None:
        with trainer._autocast():
            loss = plan_loss(model, plan, model.forward_from(prefix, x), y, cfg.aux_loss_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(2):
        step()
    sync(trainer.device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync(trainer.device)
    return (time.perf_counter() - t0) / (steps * bs)


def validation_pass(trainer: Trainer, plan: TrainingPlan, val: DeviceData, data_key) -> float:
    """Seconds of one validation pass of the fast path over ``val`` (prefix cache warm), as
    every epoch of an evaluation runs it; lets ``scripts/extrapolate_search.py`` split an
    evaluation's time into training and validation. Call after :func:`compute_floor` (which
    applies the plan's freezing, what the frozen prefix is read from)."""
    times = []
    for _ in range(2):  # the first pass may build the prefix cache of ``val``
        sync(trainer.device)
        t0 = time.perf_counter()
        trainer.evaluate(val, plan=plan, data_key=data_key)
        sync(trainer.device)
        times.append(time.perf_counter() - t0)
    return times[-1]


def random_genomes(k: int, num_blocks: int, seed: int) -> dict[str, list[float]]:
    """``k`` genomes drawn as the search draws its initial population (SPEC section 4)."""
    rng = np.random.default_rng(seed)
    return {f"rand{i + 1}": [round(float(x), 4) for x in random_genome(rng, num_blocks)] for i in range(k)}


def summarise(records: list[dict], genomes: list[str], paths: list[str]) -> list[dict]:
    rows = []
    groups = {g: [g] for g in genomes}
    randoms = [g for g in genomes if g.startswith("rand")]
    if randoms:
        groups["RANDOM"] = randoms  # the search's initial-population mix
    groups["ALL"] = genomes
    for g, members in groups.items():
        per_path = {}
        for path in paths:
            rs = [r for r in records if r["path"] == path and r["genome"] in members]
            if not rs:
                continue
            secs = sum(r["seconds"] for r in rs)
            per_path[path] = {
                "genome": g, "path": path, "evaluations": len(rs),
                "epochs_mean": float(np.mean([r["epochs_run"] for r in rs])),
                "s_per_eval": secs / len(rs),
                "first_s": rs[0]["seconds"] if len(members) == 1 else None,
                "cpu_s_per_eval": sum(r["cpu_s"] for r in rs) / len(rs),
                "evals_per_hour": 3600.0 * len(rs) / secs if secs > 0 else float("nan"),
                "train_images_per_s": sum(r["train_images"] for r in rs) / secs if secs > 0 else float("nan"),
                "best_val_acc_mean": float(np.mean([r["best_val_acc"] for r in rs])),
            }
            if all("floor_s" in r for r in rs):
                per_path[path]["floor_s_per_eval"] = sum(r["floor_s"] for r in rs) / len(rs)
        if "fast" in per_path and "naive" in per_path:
            f, n = per_path["fast"], per_path["naive"]
            f["speedup_evals_per_hour"] = f["evals_per_hour"] / n["evals_per_hour"]
            f["speedup_images_per_s"] = f["train_images_per_s"] / n["train_images_per_s"]
            if "floor_s_per_eval" in n:  # the most any exact implementation could gain here
                f["max_speedup_at_floor"] = n["s_per_eval"] / n["floor_s_per_eval"]
        rows += list(per_path.values())
    return rows


def print_table(rows: list[dict]) -> None:
    head = (f"{'genome':<7} {'path':<6} {'evals':>5} {'epochs':>6} {'s/eval':>8} {'first_s':>8} "
            f"{'evals/hour':>10} {'images/s':>9} {'best_val':>8} {'floor_s':>8} {'fast/naive':>17} {'max':>6}")
    print(head)
    print("-" * len(head))
    for r in rows:
        ratio = ""
        if "speedup_evals_per_hour" in r:
            ratio = f"{r['speedup_evals_per_hour']:6.2f}x ({r['speedup_images_per_s']:.2f}x img)"
        first = "-" if r["first_s"] is None else f"{r['first_s']:.2f}"
        floor = f"{r['floor_s_per_eval']:.2f}" if "floor_s_per_eval" in r else "-"
        best = f"{r['max_speedup_at_floor']:.2f}x" if "max_speedup_at_floor" in r else ""
        print(f"{r['genome']:<7} {r['path']:<6} {r['evaluations']:>5} {r['epochs_mean']:>6.1f} "
              f"{r['s_per_eval']:>8.2f} {first:>8} {r['evals_per_hour']:>10.0f} "
              f"{r['train_images_per_s']:>9.1f} {r['best_val_acc_mean']:>8.3f} {floor:>8} {ratio:>17} {best:>6}")
    print("fast/naive: ratio of evaluations per hour (in brackets: of training images per second).")
    print("first_s: the first evaluation of the row (for the fast path it builds the genome's prefix cache).")
    print("floor_s: the genome's compute floor per evaluation (trained blocks' forward + backward + optimizer")
    print("step on data already in memory); max: naive s/eval / floor_s, the most any exact implementation")
    print("of the same training could gain over the naive loop on this machine.")
    print("Wall-clock times. On a shared CPU compare the per-evaluation 'process CPU' seconds too (JSON: cpu_s);")
    print("oversubscribed cores (load average above the core count) make CPU wall times noisy.")


def write_out(path: Path, machine: dict, settings: dict, rows: list[dict], records: list[dict],
              partial: bool = False) -> None:
    """The table as CSV, or as JSON with every evaluation (``partial``: written during the run,
    after each genome, so that a run stopped by a time limit still leaves what it measured)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".csv":
        keys = list(dict.fromkeys(k for r in rows for k in r))
        mkeys = [k for k in machine if k not in keys]
        with path.open("w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=keys + mkeys + ["preset", "epochs", "n_train", "n_val"])
            w.writeheader()
            for r in rows:
                w.writerow({**r, **{k: machine[k] for k in mkeys}, "preset": settings["preset"],
                            "epochs": settings["epochs"], "n_train": settings["n_train_images"],
                            "n_val": settings["n_val_images"]})
    else:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps({"machine": machine, "settings": settings, "partial": partial, "table": rows,
                                   "evaluations": records}, indent=2, default=str))
        tmp.replace(path)
    if not partial:
        print(f"wrote {path}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="embedded")
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 (default auto)")
    ap.add_argument("--epochs", type=int, help="epochs per evaluation (default: embedded 5, flowers 3)")
    ap.add_argument("--patience", type=int, default=None,
                    help="early-stopping patience (default: = epochs, so every evaluation runs every epoch; "
                         "the paper uses 3)")
    ap.add_argument("--repeats", type=int, default=1, help="evaluations per (genome, seed) and path")
    ap.add_argument("--seeds", type=int, nargs="+", default=[684], help="paper: 684 559 629")
    ap.add_argument("--genomes", default=",".join(GENOMES), help=f"comma list of {list(GENOMES)}")
    ap.add_argument("--population", type=int, default=0, metavar="K",
                    help="also time K random genomes drawn as the search's initial population "
                         "(rows rand1..randK and their mix, RANDOM)")
    ap.add_argument("--population-seed", type=int, default=0)
    ap.add_argument("--paths", default="fast,naive", help="comma list of fast,naive")
    ap.add_argument("--naive-seeds", type=int, default=None, metavar="K",
                    help="run the naive loop for the first K of --seeds only (default: embedded all, flowers 1; "
                         "0 = all); per-evaluation times and the ratio are per evaluation either way")
    ap.add_argument("--checkpoint", help="an evotune checkpoint file (embedded: the source model)")
    ap.add_argument("--weights", choices=["auto", "imagenet", "random"], default="auto",
                    help="flowers: ImageNet weights from the local torch cache (auto: when present)")
    ap.add_argument("--classes", type=int, help="flowers: number of classes (default 102)")
    ap.add_argument("--n-train", type=int, help="training images per class (default 10)")
    ap.add_argument("--n-val", type=int, help="validation images per class (default 5)")
    ap.add_argument("--batch-size", type=int, help="training batch (embedded 32 as the project, flowers 96)")
    ap.add_argument("--eval-batch-size", type=int, help="evaluation batch (embedded 256, flowers 64)")
    ap.add_argument("--pretrain-per-class", type=int, default=60, help="embedded quick pretraining: images/class")
    ap.add_argument("--pretrain-epochs", type=int, default=2)
    ap.add_argument("--no-amp", action="store_true",
                    help="fast path without bf16 autocast (default: training.amp auto, i.e. on CUDA only)")
    ap.add_argument("--no-warmup", action="store_true")
    ap.add_argument("--no-floor", action="store_true", help="skip timing each genome's compute floor")
    ap.add_argument("--threads", type=int, help="torch.set_num_threads")
    ap.add_argument("--workdir", help="where generated checkpoints go (default: a temporary folder)")
    ap.add_argument("--out", help="write the table (+ machine) as .json (with every evaluation) or .csv")
    args = ap.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    p = PRESETS[args.preset]
    device = resolve_device(args.device)
    genomes = [g.strip() for g in args.genomes.split(",") if g.strip()]
    paths = [x.strip() for x in args.paths.split(",") if x.strip()]
    for g in genomes:
        if g not in GENOMES:
            ap.error(f"unknown genome {g!r}; choose from {list(GENOMES)}")
    if args.population:
        drawn = random_genomes(args.population, len(GENOMES["all"]) - 1, args.population_seed)
        GENOMES.update(drawn)
        genomes += list(drawn)
    for x in paths:
        if x not in ("fast", "naive"):
            ap.error(f"unknown path {x!r}")
    epochs = args.epochs or p["epochs"]
    cfg = base_training_config(epochs=epochs, patience=args.patience or epochs,
                               batch_size=args.batch_size or p["batch_size"],
                               eval_batch_size=args.eval_batch_size or p["eval_batch_size"],
                               device=str(device), amp=False if args.no_amp else "auto")
    naive_seeds = args.naive_seeds if args.naive_seeds is not None else p["naive_seeds"]
    naive_seeds = list(args.seeds[:naive_seeds]) if naive_seeds else list(args.seeds)
    machine = machine_info(device)
    print("=" * 100)
    print(f"evotune genome-evaluation benchmark: preset {args.preset} on {device}")
    print(f"CPU: {machine['cpu']} ({avx512_label(machine['avx512'])}, {machine['cores']} cores, "
          f"torch threads {machine['torch_threads']})")
    if machine["gpu"]:
        print(f"GPU: {machine['gpu']} (CUDA {machine.get('cuda')})")
    print(f"torch {machine['torch']}, torchvision {machine['torchvision']}, python {machine['python']}")
    print("=" * 100)

    tmp = tempfile.TemporaryDirectory(prefix="evotune-bench-")
    workdir = Path(args.workdir) if args.workdir else Path(tmp.name)
    workdir.mkdir(parents=True, exist_ok=True)
    d = prepare(args, device, workdir)
    settings = {
        "preset": args.preset, "arch": d["arch"], "weights": d["weights"], "classes": d["n_cls"],
        "n_train_images": len(d["ytr"]), "n_val_images": len(d["yva"]), "resize": d["resize"], "crop": d["crop"],
        "epochs": cfg.epochs, "patience": cfg.patience, "batch_size": cfg.batch_size,
        "eval_batch_size": cfg.eval_batch_size, "base_lr": cfg.base_lr, "seeds": args.seeds,
        "repeats": args.repeats, "genomes": {g: GENOMES[g] for g in genomes},
        "naive_seeds": naive_seeds,
        "fast_amp": device_setting(cfg.amp, device),
        "fast_channels_last": device_setting(cfg.channels_last, device),
    }
    print(f"{d['arch']} ({d['weights']}), {d['n_cls']} classes, {len(d['ytr'])} train / {len(d['yva'])} val "
          f"images, resize {d['resize']} crop {d['crop']}; epochs {cfg.epochs}, patience {cfg.patience}, "
          f"batch {cfg.batch_size}/{cfg.eval_batch_size}, seeds {args.seeds} (naive loop: {naive_seeds}), "
          f"repeats {args.repeats}")

    naive_kw = dict(resize_size=d["resize"], crop_size=d["crop"], mean=d["mean"], std=d["std"],
                    num_classes=d["n_cls"], device=device)
    trainer = train = val = None
    if "fast" in paths:
        # one-off costs of the fast path (amortised over a whole search)
        t0 = time.perf_counter()
        xtr = decode_once(d["train_items"], resize_size=d["resize"], crop_size=d["crop"])
        xva = decode_once(d["val_items"], resize_size=d["resize"], crop_size=d["crop"])
        train = DeviceData(xtr.to(device), torch.tensor(d["ytr"], device=device), d["n_cls"])
        val = DeviceData(xva.to(device), torch.tensor(d["yva"], device=device), d["n_cls"])
        sync(device)
        t1 = time.perf_counter()
        trainer = Trainer(model_from_checkpoint(load_checkpoint(d["ckpt_path"]), d["n_cls"]), cfg,
                          mean=d["mean"], std=d["std"], device=device)
        sync(device)
        t2 = time.perf_counter()
        settings["fast_one_off_s"] = {"decode_resize_upload": t1 - t0, "build_trainer": t2 - t1}
        print(f"fast path one-off: decode+resize+upload {t1 - t0:.2f}s, build Trainer {t2 - t1:.2f}s "
              f"(uint8 data on {device}: {(xtr.numel() + xva.numel()) / 2**20:.1f} MiB)")

    if not args.no_warmup:
        t0 = time.perf_counter()
        wcfg = replace(cfg, epochs=1, patience=1)
        k = min(len(d["ytr"]), 2 * cfg.batch_size)
        kv = min(len(d["yva"]), cfg.eval_batch_size)
        warm_plan = genome_plan(GENOMES["all"], cfg.base_lr, name="warmup")
        if "fast" in paths:
            wt = Trainer(model_from_checkpoint(load_checkpoint(d["ckpt_path"]), d["n_cls"]), wcfg,
                         mean=d["mean"], std=d["std"], device=device)
            wt.train(warm_plan, DeviceData(train.images[:k], train.labels[:k], d["n_cls"]),
                     DeviceData(val.images[:kv], val.labels[:kv], d["n_cls"]), seed=0, data_key=None)
            del wt
        if "naive" in paths:
            naive_train(d["ckpt_path"], warm_plan, d["train_items"][:k], d["ytr"][:k], d["val_items"][:kv],
                        d["yva"][:kv], wcfg, seed=0, **naive_kw)
        sync(device)
        print(f"warm-up (untimed, no prefix cache built): {time.perf_counter() - t0:.1f}s")

    records: list[dict] = []
    n_train = len(d["ytr"])
    plans = {g: genome_plan(GENOMES[g], cfg.base_lr, name=g) for g in genomes}
    for g, plan in plans.items():
        mask = decode(GENOMES[g], cfg.base_lr).mask
        print(f"genome {g}: trained blocks {mask} (genes {GENOMES[g]})")
        for seed in args.seeds:
            for rep in range(args.repeats):
                for path in paths:
                    if path == "naive" and seed not in naive_seeds:
                        continue
                    sync(device)
                    t0, c0 = time.perf_counter(), time.process_time()
                    if path == "fast":
                        misses = trainer.cache.misses
                        res = trainer.train(plan, train, val, seed=seed, data_key=("bench", 0))
                        sync(device)
                        extra = {"prefix_cache_built": trainer.cache.misses > misses,
                                 "prefix_cache_mib": trainer.cache.nbytes / 2**20}
                        images = res.epochs_run * n_train
                    else:
                        res = naive_train(d["ckpt_path"], plan, d["train_items"], d["ytr"], d["val_items"],
                                          d["yva"], cfg, seed=seed, **naive_kw)
                        sync(device)
                        extra = {"setup_s": res.setup_seconds}
                        images = res.train_images
                    secs, cpu_s = time.perf_counter() - t0, time.process_time() - c0
                    rec = {"genome": g, "mask": mask, "path": path, "seed": seed, "repeat": rep, "seconds": secs, "cpu_s": cpu_s,
                           "epochs_run": res.epochs_run, "train_images": images,
                           "best_val_acc": res.best_val_acc, "best_epoch": res.best_epoch,
                           "val_history": [h["val_macro_acc"] for h in res.history], **extra}
                    records.append(rec)
                    note = " (built prefix cache)" if extra.get("prefix_cache_built") else ""
                    print(f"  {g:<6} {path:<5} seed {seed} #{rep}: {secs:7.2f}s (process CPU {cpu_s:6.2f}s), "
                          f"{res.epochs_run} epochs, "
                          f"best val {res.best_val_acc:.3f}{note}", flush=True)
        if args.out and Path(args.out).suffix.lower() == ".json":  # what is measured so far
            write_out(Path(args.out), machine, settings, summarise(records, genomes, paths), records, partial=True)

    if trainer is not None and not args.no_floor:
        for g, plan in plans.items():
            per_image = compute_floor(trainer, plan, train)
            val_s = validation_pass(trainer, plan, val, data_key=(("bench", 0), "val"))
            for r in records:
                if r["genome"] == g:
                    r["floor_s"] = per_image * r["train_images"]
                    if r["path"] == "fast":
                        r["val_pass_s"] = val_s
    rows = summarise(records, genomes, paths)
    print()
    print_table(rows)
    if args.out:
        write_out(Path(args.out), machine, settings, rows, records)
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    from evotune.errors import script_main

    sys.exit(script_main(main))
