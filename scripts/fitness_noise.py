#!/usr/bin/env python
"""How much of the search fitness is signal? Variance components of genome evaluations.

The search ranks genomes by one evaluation each: the mean validation accuracy of
``len(search.seeds)`` trainings on one search chunk (``search.train_split_pct`` cuts train and
val into ``ceil(1 / pct)`` chunks; generation k is judged on chunk k mod n_chunks). With few
validation images per chunk, seed and chunk noise can be as large as the differences between
genomes, and the search then selects noise. This script measures it for one task configuration.

It builds the target task with the project's own functions (the data_processing nodes
``ingest_index`` / ``split_dataset`` / ``preprocess_splits`` with the ``data`` parameters of
conf/base, changed by the options below), the backbone as the backbone stage does
(``backbone_from_source``: the source model with a fresh head for the target's classes), the
search chunks as the search cuts them (``evotune.data.splitting.search_chunks`` / ``chunk_data``), and evaluates K
genomes (full fine-tuning, head only, and K-2 random genomes drawn with
``evotune.genome.random_genome``) with the search's own evaluator
(:class:`evotune.search.evaluator.GenomeEvaluator`, the ``training`` parameters, the reused
:class:`evotune.training.Trainer`) on every chunk with S seeds (the search's seeds first).

From the accuracies acc[genome, chunk, seed] it estimates, by the balanced two-way
random-effects ANOVA (variance components from the mean squares MS_G, MS_C, MS_GC, MS_E):

* ``seed_std``: the std of one training's accuracy from its seed alone (sqrt MS_E);
* ``genome_chunk_std``: genome x chunk interaction (how a genome's fitness moves between
  chunks beyond what moves every genome), ``chunk_main_std``: the chunk's shift of every genome
  (one degree of freedom with two chunks: a rough number), ``chunk_std``: both together (same
  genome, different chunk);
* ``signal_std``: the between-genome std of the true, noise-free fitness (its mean over
  chunks and seeds): var(genome means) minus the noise variance of a genome mean
  ((MS_G - MS_GC) / (C S));
* ``seed_noise_std_search``: the std of a search evaluation's seed noise (sqrt(MS_E / n) for the
  search's n seeds), ``noise_std_search``: all the noise of one search evaluation (n seeds,
  one chunk) around the genome's true fitness: chunk main + interaction + seed / n;
  ``noise_std_within_chunk``: without the chunk's main effect (what matters between genomes
  judged on the same chunk);
* ``reliability`` = signal var / (signal var + noise var of one search evaluation), and
  ``reliability_within_chunk`` with the within-chunk noise: the share of the variance of
  observed fitnesses that is due to the genomes;
* ``observed_between_genome_std_per_chunk``: the naive number, the std over genomes of the
  search-seed mean on one chunk (averaged over chunks);
* ``seconds_per_search_eval``: the mean training time times the search's seed count, and
  ``search_seconds_estimate``: that times the search's evaluations
  (N + G (E + N), conf/base ``search``). Wall-clock on this machine: on a shared CPU, busy
  neighbours inflate it.

Everything is computed over all K genomes, and again over the random genomes only (``random_``
prefix): full fine-tuning and head only are extremes that widen the spread. Accuracies and
stds are in points (percent).

Backbone: ``--checkpoint`` a source model
(``data/06_models/source_model.pt/<version>/source_model.pt``) or a backbone
(``data/06_models/backbone.pt/<version>/backbone.pt``); either way its head is redrawn for
the target's classes (``backbone.head_seed``). Without it, a source model is pretrained here
with the source_pretraining pipeline's functions at ``--image-size`` (``--pretrain-per-class``
images per class, ``--pretrain-epochs``). Its input size should match ``--image-size``.

Output: a table on stdout; ``--out`` writes JSON (settings, components, every training) or,
with a .csv suffix, the summary as one CSV row (appended when the file exists, so several
configurations collect in one table).

Examples::

    python scripts/fitness_noise.py --checkpoint data/06_models/source_model.pt/<version>/source_model.pt \\
        --genomes 8 --seeds 6 --out fitness_noise.json
    python scripts/fitness_noise.py --checkpoint <16px source_model.pt> --image-size 16 \\
        --train-per-class 20 --val-per-class 30 --out noise.csv
    python scripts/fitness_noise.py --classes 3 --train-per-class 2 --val-per-class 2 --genomes 3 --seeds 2 \\
        --epochs 1 --pretrain-per-class 6 --pretrain-epochs 1
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:  # runnable without installing the package
    sys.path.insert(0, str(ROOT / "src"))

from evotune.backbones import load_checkpoint, model_from_checkpoint  # noqa: E402
from evotune.config import load_parameters  # noqa: E402
from evotune.data.splitting import chunk_data, search_chunks  # noqa: E402
from evotune.errors import ParameterError  # noqa: E402
from evotune.genome import random_genome  # noqa: E402
from evotune.pipelines.backbone.nodes import backbone_from_source  # noqa: E402
from evotune.pipelines.data_processing.nodes import (  # noqa: E402
    image_options,
    ingest_index,
    preprocess_splits,
    split_dataset,
    split_options,
)
from evotune.search.config import SearchConfig  # noqa: E402
from evotune.search.evaluator import GenomeEvaluator  # noqa: E402
from evotune.search.evolution import EvalRequest  # noqa: E402
from evotune.training import TrainConfig, Trainer  # noqa: E402

# --------------------------------------------------------------------------- statistics


def variance_components(acc: np.ndarray, search_seeds: int) -> dict[str, float | None]:
    """Variance components of ``acc[genome, chunk, seed]`` (balanced; any unit) by the two-way
    random-effects ANOVA; see the module docstring for the names. Negative variance
    estimates are reported as 0 (their stds as 0). With one chunk the interaction and the
    chunk effects cannot be separated from the genome effect (they are None; the signal then
    holds the genome x chunk interaction too)."""
    acc = np.asarray(acc, dtype=float)
    if acc.ndim != 3:
        raise ValueError(f"acc must be [genomes, chunks, seeds]; got shape {acc.shape}")
    k, c, s = acc.shape
    if k < 2 or s < 2:
        raise ValueError(f"need at least 2 genomes and 2 seeds; got {k} genomes, {s} seeds")
    n = int(search_seeds)
    cell = acc.mean(axis=2)  # [k, c]
    g_mean = cell.mean(axis=1)  # [k]
    c_mean = cell.mean(axis=0)  # [c]
    grand = float(cell.mean())
    ms_e = float(((acc - cell[..., None]) ** 2).sum() / (k * c * (s - 1)))
    ms_g = float(c * s * ((g_mean - grand) ** 2).sum() / (k - 1))
    out: dict[str, float | None] = {"genomes": k, "chunks": c, "seeds": s, "search_seeds": n,
                                    "mean_acc": grand, "seed_var": ms_e}
    if c > 1:
        inter = cell - g_mean[:, None] - c_mean[None, :] + grand
        ms_gc = float(s * (inter ** 2).sum() / ((k - 1) * (c - 1)))
        ms_c = float(k * s * ((c_mean - grand) ** 2).sum() / (c - 1))
        gc_var = max((ms_gc - ms_e) / s, 0.0)
        c_var = max((ms_c - ms_gc) / (k * s), 0.0)
        signal_var = max((ms_g - ms_gc) / (c * s), 0.0)
    else:
        gc_var = c_var = None
        signal_var = max((ms_g - ms_e) / s, 0.0)
    within = (gc_var or 0.0) + ms_e / n
    noise = within + (c_var or 0.0)
    obs = [float(np.std(acc[:, j, :n].mean(axis=1), ddof=1)) for j in range(c)]
    out.update({
        "signal_var": signal_var,
        "genome_chunk_var": gc_var,
        "chunk_main_var": c_var,
        "noise_var_search": noise,
        "noise_var_within_chunk": within,
        "signal_std": signal_var ** 0.5,
        "seed_std": ms_e ** 0.5,
        "genome_chunk_std": None if gc_var is None else gc_var ** 0.5,
        "chunk_main_std": None if c_var is None else c_var ** 0.5,
        "chunk_std": None if gc_var is None else (gc_var + c_var) ** 0.5,
        "seed_noise_std_search": (ms_e / n) ** 0.5,
        "noise_std_search": noise ** 0.5,
        "noise_std_within_chunk": within ** 0.5,
        "reliability": signal_var / (signal_var + noise) if signal_var + noise > 0 else None,
        "reliability_within_chunk": signal_var / (signal_var + within) if signal_var + within > 0 else None,
        "observed_between_genome_std_per_chunk": float(np.mean(obs)),
    })
    return out


# --------------------------------------------------------------------------- the task


def task_parameters(args, params: dict) -> tuple[dict, dict, dict]:
    """The ``data``, ``search`` and ``training`` parameters of conf/base with the options applied."""
    data = copy.deepcopy(params["data"])
    split = data["split"]
    for opt, key in (("train_per_class", "train_per_class"), ("val_per_class", "val_per_class"),
                     ("val_fraction", "val_fraction")):
        if getattr(args, opt) is not None:
            split[key] = getattr(args, opt)
    if args.image_size is not None:
        data["image"] = {"resize_size": args.image_size, "crop_size": args.image_size, "interpolation": "bilinear"}
    search = dict(params["search"])
    if args.train_split_pct is not None:
        search["train_split_pct"] = args.train_split_pct
    training = dict(params["training"])
    if args.epochs is not None:
        training["epochs"] = args.epochs
    if args.device is not None:
        training["device"] = args.device
    return data, search, training


def build_task(data_params: dict, n_chunks: int, classes: int | None, params: dict):
    """target_train / target_val as the data_processing pipeline makes them, then (``classes``)
    only the first n classes. The split draws each class's images with its own seeded
    generator, so a class's images are the same with or without the other classes."""
    index = split_dataset(ingest_index(data_params), data_params, n_chunks)
    train, val, _test = preprocess_splits(index, data_params, params["backbone"], params["source_pretraining"])
    if classes is not None:
        if not 2 <= classes <= len(train.classes):
            raise ParameterError(f"--classes must be between 2 and {len(train.classes)}; got {classes}.")
        train, val = (replace(s.subset(s.labels < classes), classes=list(s.classes[:classes]))
                      for s in (train, val))
    return train, val


def pretrain_here(args, params: dict, image_size: int):
    """A source model from the source_pretraining pipeline's nodes, at ``image_size``, smaller."""
    from evotune.pipelines.source_pretraining.nodes import make_source_dataset, pretrain_source_model

    sp = copy.deepcopy(params["source_pretraining"])
    sp["data"].update(n_per_class=args.pretrain_per_class, image_size=image_size)
    sp["training"].update(epochs=args.pretrain_epochs, cosine_t_max=args.pretrain_epochs)
    t0 = time.perf_counter()
    ckpt, metrics = pretrain_source_model(*make_source_dataset(sp), sp, params["training"])
    print(f"pretrained {ckpt.arch} here on {metrics['train_images']} printed characters at {image_size}px, "
          f"{metrics['epochs_run']} epochs: source test macro acc {metrics['test_macro_acc']:.3f} "
          f"({time.perf_counter() - t0:.0f}s)")
    return ckpt


def genomes_to_test(k: int, num_blocks: int, seed: int) -> dict[str, np.ndarray]:
    """Full fine-tuning, head only and ``k - 2`` random genomes (the search's initial draw)."""
    if k < 2:
        raise ParameterError(f"--genomes must be >= 2 (full fine-tuning and head only); got {k}.")
    out = {"full": np.array([0.5] * num_blocks + [0.0]),  # every block at the base lr
           "head": np.array([0.0] * (num_blocks - 1) + [0.5, 0.25])}  # only the head
    rng = np.random.default_rng(seed)
    for i in range(k - 2):
        out[f"rand{i + 1}"] = random_genome(rng, num_blocks)
    return out


def seed_list(search_seeds: list[int], n: int) -> list[int]:
    """The search's seeds first, then 1000, 1001, ... (not already in the list)."""
    seeds = [int(s) for s in search_seeds][:n]
    extra = 1000
    while len(seeds) < n:
        if extra not in seeds:
            seeds.append(extra)
        extra += 1
    return seeds


# --------------------------------------------------------------------------- output

ROW_KEYS = ["train_images_per_eval", "val_images_per_eval", "mean_acc", "signal_std", "seed_std", "chunk_std",
            "chunk_main_std", "genome_chunk_std", "seed_noise_std_search", "noise_std_search",
            "noise_std_within_chunk", "reliability", "reliability_within_chunk",
            "observed_between_genome_std_per_chunk", "random_signal_std", "random_reliability",
            "seconds_per_search_eval", "search_seconds_estimate"]


def summary_row(settings: dict, comps: dict, random_comps: dict | None, seconds: float) -> dict:
    row = {k: settings[k] for k in ("classes", "train_per_class", "val_per_class", "train_split_pct", "image_size",
                                    "epochs", "seeds", "genomes")}
    row.update(train_images_per_eval=settings["train_images_per_eval"],
               val_images_per_eval=settings["val_images_per_eval"])
    row.update({k: v for k, v in comps.items() if k not in row})
    if random_comps is not None:
        row.update({f"random_{k}": v for k, v in random_comps.items()
                    if k in ("signal_std", "reliability", "reliability_within_chunk", "noise_std_search")})
    row["search_seeds"], row["search_evaluations"] = settings["search_seeds"], settings["search_evaluations"]
    row["seconds_per_search_eval"] = seconds * settings["search_seeds"]
    row["search_seconds_estimate"] = row["seconds_per_search_eval"] * settings["search_evaluations"]
    return row


def fmt(v, pct: bool = True) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.2f}" if pct else f"{v:.3f}"
    return str(v)


def print_table(row: dict) -> None:
    print()
    print("variance components of the search fitness (accuracy points; reliability 0..1)")
    print("-" * 78)
    lines = [
        ("images per evaluation (train / val)", f"{row['train_images_per_eval']} / {row['val_images_per_eval']}"),
        ("mean validation accuracy", fmt(row["mean_acc"])),
        ("signal: between-genome std of the true fitness", fmt(row["signal_std"])),
        ("  random genomes only", fmt(row.get("random_signal_std"))),
        ("seed std of one training", fmt(row["seed_std"])),
        ("chunk std (same genome, other chunk)", fmt(row["chunk_std"])),
        ("  chunk main effect / genome x chunk", f"{fmt(row['chunk_main_std'])} / {fmt(row['genome_chunk_std'])}"),
        (f"seed noise std of a {row['search_seeds']}-seed mean", fmt(row["seed_noise_std_search"])),
        ("noise std of a search evaluation", fmt(row["noise_std_search"])),
        ("  within one chunk", fmt(row["noise_std_within_chunk"])),
        ("reliability (signal / (signal + noise) var)", fmt(row["reliability"], pct=False)),
        ("  within one chunk", fmt(row["reliability_within_chunk"], pct=False)),
        ("  random genomes only", fmt(row.get("random_reliability"), pct=False)),
        ("observed std over genomes of one chunk's fitness", fmt(row["observed_between_genome_std_per_chunk"])),
        (f"seconds per search evaluation ({row['search_seeds']} seeds)", f"{row['seconds_per_search_eval']:.2f}"),
        (f"search estimate ({row['search_evaluations']} evaluations)",
         f"{row['search_seconds_estimate']:.0f} s ({row['search_seconds_estimate'] / 60:.1f} min)"),
    ]
    for name, value in lines:
        print(f"{name:<52} {value:>24}")
    print("Wall-clock seconds on this machine; on a shared CPU, other processes inflate them.")


def write_out(path: Path, row: dict, result: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".csv":
        new = not path.exists()
        with path.open("a", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(row), extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerow(row)
    else:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(result, indent=2, default=float))
        tmp.replace(path)
    print(f"wrote {path}")


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, help="source_model.pt or backbone.pt file (default: pretrain here)")
    ap.add_argument("--train-per-class", type=int, help="data.split.train_per_class (default: conf/base)")
    ap.add_argument("--val-per-class", type=int, help="data.split.val_per_class (default: conf/base)")
    ap.add_argument("--val-fraction", type=float,
                    help="data.split.val_fraction (default: conf/base); the val pool a class's val_per_class "
                         "images are taken from")
    ap.add_argument("--classes", type=int, help="only the first n classes (default: all)")
    ap.add_argument("--train-split-pct", type=float, help="search.train_split_pct (default: conf/base)")
    ap.add_argument("--image-size", type=int, help="data.image.resize_size = crop_size (default: conf/base)")
    ap.add_argument("--epochs", type=int, help="training.epochs (default: conf/base)")
    ap.add_argument("--seeds", type=int, default=6, help="trainings per genome and chunk (default 6; the search's "
                                                          "seeds first)")
    ap.add_argument("--genomes", type=int, default=8,
                    help="K: full fine-tuning, head only and K-2 random genomes (default 8)")
    ap.add_argument("--genome-seed", type=int, default=0, help="seeds the random genomes")
    ap.add_argument("--pretrain-per-class", type=int, default=100, help="pretraining here: images per class")
    ap.add_argument("--pretrain-epochs", type=int, default=5, help="pretraining here: epochs")
    ap.add_argument("--device", help="training.device (default: conf/base)")
    ap.add_argument("--threads", type=int, help="torch.set_num_threads")
    ap.add_argument("--out", type=Path, help=".json (everything) or .csv (the summary row, appended)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    params = load_parameters(str(ROOT / "conf"))
    data_params, search_params, training_params = task_parameters(args, params)
    scfg = SearchConfig.from_params(search_params)
    tcfg = TrainConfig.from_params(training_params)
    n_chunks = scfg.n_chunks
    image_size = image_options(data_params, params["backbone"], params["source_pretraining"]).crop_size
    if args.seeds < 2:
        raise ParameterError(f"--seeds must be >= 2 to measure seed noise; got {args.seeds}.")

    train, val = build_task(data_params, n_chunks, args.classes, params)
    source = load_checkpoint(args.checkpoint) if args.checkpoint else pretrain_here(args, params, image_size)
    if source.input_size != image_size:
        print(f"note: the checkpoint expects {source.input_size}px inputs; the task is decoded at {image_size}px")
    bb_params = {**params["backbone"], "weights": "source", "arch": source.arch}
    backbone = backbone_from_source(source, train, bb_params, data_params)
    trainer = Trainer(model_from_checkpoint(backbone), tcfg, mean=backbone.mean, std=backbone.std)
    train_chunks, val_chunks = search_chunks(train, val, n_chunks=n_chunks, seed=scfg.chunk_seed)
    chunks = chunk_data(trainer.device, train, val, train_chunks, val_chunks, n_chunks)
    seeds = seed_list(scfg.seeds, args.seeds)
    genomes = genomes_to_test(args.genomes, trainer.model.num_blocks, args.genome_seed)
    evaluator = GenomeEvaluator(trainer, chunks, seeds=seeds, base_lr=tcfg.base_lr,
                                force_head=scfg.force_head_trainable)
    settings = {
        "checkpoint": str(args.checkpoint) if args.checkpoint else "pretrained here", "arch": backbone.arch,
        "classes": len(train.classes), "train_per_class": split_options(data_params)["train_per_class"],
        "val_per_class": split_options(data_params)["val_per_class"],
        "val_fraction": data_params["split"]["val_fraction"], "train_split_pct": scfg.train_split_pct,
        "n_chunks": n_chunks, "image_size": image_size, "checkpoint_input_size": source.input_size,
        "epochs": tcfg.epochs, "patience": tcfg.patience, "seeds": len(seeds), "seed_list": seeds,
        "genomes": len(genomes), "genome_genes": {k: [float(x) for x in g] for k, g in genomes.items()},
        "search_seeds": len(scfg.seeds), "search_evaluations": scfg.evaluations,
        "train_images_per_eval": len(chunks[0].train), "val_images_per_eval": len(chunks[0].val),
        "chunk_sizes": {c: [len(d.train), len(d.val)] for c, d in chunks.items()},
        "device": str(trainer.device), "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
    }
    print(f"task: {settings['classes']} classes, {len(train.labels)} train / {len(val.labels)} val images at {image_size}px, "
          f"{n_chunks} chunk(s) of ~{settings['train_images_per_eval']} train / "
          f"~{settings['val_images_per_eval']} val images; {backbone.arch} from {settings['checkpoint']}; "
          f"{len(genomes)} genomes x {n_chunks} chunks x {len(seeds)} seeds {seeds}, {tcfg.epochs} epochs "
          f"(patience {tcfg.patience}) on {trainer.device}", flush=True)

    acc = np.zeros((len(genomes), n_chunks, len(seeds)))
    trainings = []
    t_start = time.perf_counter()
    for i, (name, genes) in enumerate(genomes.items()):
        for c in range(n_chunks):
            evaluator([EvalRequest(f"{name}/chunk{c}", genes, 0, name, c)])
            row = evaluator.rows[-1]
            acc[i, c] = row["val_accs"]
            per = row["seconds"] / len(seeds)
            trainings.append({"genome": name, "chunk": c, "mask": row["mask"], "val_accs": row["val_accs"],
                              "epochs": row["epochs"], "diverged": row["diverged"], "seconds": row["seconds"]})
            print(f"  {name:<6} chunk {c} mask {row['mask']}: val acc "
                  f"{' '.join(f'{100 * a:5.1f}' for a in row['val_accs'])}  "
                  f"({per:.2f}s per training)", flush=True)
    wall = time.perf_counter() - t_start
    n_train = sum(len(t["val_accs"]) for t in trainings)
    per_training = sum(t["seconds"] for t in trainings) / n_train
    pts = acc * 100.0
    comps = variance_components(pts, len(scfg.seeds))
    rand = [i for i, n in enumerate(genomes) if n.startswith("rand")]
    random_comps = variance_components(pts[rand], len(scfg.seeds)) if len(rand) >= 2 else None
    row = summary_row(settings, comps, random_comps, per_training)
    print_table(row)
    if args.out:
        write_out(args.out, row, {"settings": settings, "summary": row, "components": comps,
                                  "random_components": random_comps, "seconds_per_training": per_training,
                                  "wall_seconds": wall, "trainings": trainings})
    return 0


if __name__ == "__main__":
    from evotune.errors import script_main

    sys.exit(script_main(main))
