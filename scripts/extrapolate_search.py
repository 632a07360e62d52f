#!/usr/bin/env python
"""Extrapolate the wall time of the paper's full search from a benchmark JSON.

Reads the JSON that ``scripts/benchmark_evaluation.py --out`` writes (the ``flowers`` preset
on a GPU: ResNet-50, 224 px, 1,020 training / 510 validation images, every evaluation
running every epoch) and estimates BioTune's search in the paper's setting:

* Flowers-102-sized: 1,020 training + 1,020 validation images, 102 classes;
  ``search.train_split_pct`` 0.5, so each evaluation trains on about 510 images and
  validates on about 510 (one search chunk of each);
* ResNet-50 at 224 px, batch 96 / 64, up to 30 epochs with patience 3;
* N=10, E=3, G=10: N + G(2E + N - E) = 140 evaluations, x 3 seeds = 420 trainings.

Model (its assumptions are written into the output):

* per genome kind, the fast path's time per epoch splits into training, proportional to the
  training images, and one validation pass (measured on its own, ``val_pass_s``, with the
  prefix cache warm), proportional to the validation images. The per-evaluation overheads
  (restoring the weights, building the optimizer, the first evaluation's prefix cache) stay
  inside the training share, so they are scaled with the epochs: an overestimate;
* every training runs ``--epochs`` epochs (default 10: with patience 3 a training stops 3
  epochs after its best; the CPU default run, capped at 12, averaged 8.1) and the worst case
  of 30 is reported too;
* every one of the 420 trainings is run (no genome is met twice);
* the search's genomes cost between the ``head`` and the ``all`` genome; ``mixed`` (stem and
  layer1 frozen) is taken as typical, ``all`` as the upper bound;
* one-off costs: decoding and resizing the 2,040 images once (scaled from the benchmark's
  measured decode of its images) plus ``--per-training-overhead-s`` (Optuna bookkeeping per
  training, default 0.05 s).

usage: python scripts/extrapolate_search.py bench_gpu.json [--out extrapolation.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

PAPER = {"train_images": 1020, "val_images": 1020, "classes": 102, "train_split_pct": 0.5,
         "population": 10, "elite": 3, "generations": 10, "seeds": 3, "max_epochs": 30, "patience": 3}


def evaluations(n: int, e: int, g: int) -> int:
    return n + g * (2 * e + n - e)


def per_training_seconds(row: dict, val_pass_s: float | None, bench: dict, train_images: float, val_images: float,
                         epochs: float) -> dict:
    """Seconds of one training of ``epochs`` epochs on ``train_images`` / ``val_images``."""
    s_eval, ep = float(row["s_per_eval"]), float(row["epochs_mean"])
    n_tr, n_va = float(bench["n_train_images"]), float(bench["n_val_images"])
    val_epoch = float(val_pass_s) if val_pass_s is not None else 0.0
    train_epoch = max(s_eval / ep - val_epoch, 0.0)
    epoch = train_epoch * train_images / n_tr + val_epoch * val_images / n_va
    return {"bench_s_per_eval": s_eval, "bench_epochs": ep, "bench_train_s_per_epoch": train_epoch,
            "bench_val_pass_s": val_pass_s, "train_images_per_s": n_tr / train_epoch if train_epoch else None,
            "paper_s_per_epoch": epoch, "paper_s_per_training": epoch * epochs}


def extrapolate(result: dict, epochs: float, overhead_s: float) -> dict:
    settings = result["settings"]
    rows = {(r["genome"], r["path"]): r for r in result["table"]}
    val_pass = {}
    for e in result["evaluations"]:
        if e["path"] == "fast" and "val_pass_s" in e:
            val_pass[e["genome"]] = e["val_pass_s"]
    n_eval = evaluations(PAPER["population"], PAPER["elite"], PAPER["generations"])
    trainings = n_eval * PAPER["seeds"]
    tr = PAPER["train_images"] * PAPER["train_split_pct"]
    va = PAPER["val_images"] * PAPER["train_split_pct"]
    one_off = settings.get("fast_one_off_s", {}).get("decode_resize_upload")
    decode_s = None
    if one_off is not None:
        decode_s = one_off * (PAPER["train_images"] + PAPER["val_images"]) / (
            settings["n_train_images"] + settings["n_val_images"])
    out = {"machine": result.get("machine", {}), "benchmark_settings": {k: settings.get(k) for k in (
               "preset", "arch", "weights", "n_train_images", "n_val_images", "epochs", "batch_size",
               "eval_batch_size", "fast_amp", "fast_channels_last", "seeds", "naive_seeds")},
           "benchmark_partial": bool(result.get("partial", False)),
           "paper_search": {**PAPER, "evaluations": n_eval, "trainings": trainings,
                            "train_images_per_evaluation": tr, "val_images_per_evaluation": va},
           "assumptions": {
               "epochs_per_training": epochs,
               "worst_case_epochs": PAPER["max_epochs"],
               "per_training_overhead_s": overhead_s,
               "decode_once_s": decode_s,
               "typical_genome": "mixed", "upper_bound_genome": "all",
               "note": "every training runs the stated epochs; all 420 trainings run; per-evaluation overheads "
                       "scaled with epochs (overestimate); validation pass time measured separately"},
           "genomes": {}}
    for g in ("head", "mixed", "all", "RANDOM"):
        row = rows.get((g, "fast"))
        if row is None:
            continue
        vp = val_pass.get(g)
        if vp is None and g == "RANDOM":
            vps = [v for k, v in val_pass.items() if k.startswith("rand")]
            vp = sum(vps) / len(vps) if vps else None
        t = per_training_seconds(row, vp, settings, tr, va, epochs)
        t_worst = per_training_seconds(row, vp, settings, tr, va, PAPER["max_epochs"])
        fixed = (decode_s or 0.0) + overhead_s * trainings
        naive = rows.get((g, "naive"))
        out["genomes"][g] = {
            **t,
            "fast_over_naive": row.get("speedup_evals_per_hour"),
            "fast_over_naive_images": row.get("speedup_images_per_s"),
            "naive_train_images_per_s": naive.get("train_images_per_s") if naive else None,
            "fast_train_images_per_s_incl_validation": row.get("train_images_per_s"),
            "search_s": t["paper_s_per_training"] * trainings + fixed,
            "search_min": (t["paper_s_per_training"] * trainings + fixed) / 60.0,
            "search_min_worst_case_30_epochs": (t_worst["paper_s_per_training"] * trainings + fixed) / 60.0,
        }
    return out


def summary_lines(ex: dict) -> list[str]:
    a = ex["assumptions"]
    lines = [f"paper search: {ex['paper_search']['evaluations']} evaluations x {ex['paper_search']['seeds']} seeds = "
             f"{ex['paper_search']['trainings']} trainings, {ex['paper_search']['train_images_per_evaluation']:.0f} "
             f"train / {ex['paper_search']['val_images_per_evaluation']:.0f} val images each, "
             f"{a['epochs_per_training']:g} epochs assumed (worst case {a['worst_case_epochs']})"]
    lines.append(f"{'genome':<7} {'fast img/s':>10} {'naive img/s':>11} {'fast/naive':>10} {'s/training':>10} "
                 f"{'search min':>10} {'worst (30 ep)':>13}")
    for g, r in ex["genomes"].items():
        def fmt(v, spec):
            return format(v, spec) if isinstance(v, (int, float)) else "-"
        lines.append(f"{g:<7} {fmt(r['train_images_per_s'], '10.0f')} {fmt(r['naive_train_images_per_s'], '11.0f')} "
                     f"{fmt(r['fast_over_naive'], '9.2f')}x {r['paper_s_per_training']:10.2f} "
                     f"{r['search_min']:10.1f} {r['search_min_worst_case_30_epochs']:13.1f}")
    lines.append("fast img/s: training images per second of the fast path's training share (validation excluded); "
                 "naive img/s and fast/naive: per evaluation, as benchmark_evaluation.py reports them.")
    if ex["benchmark_partial"]:
        lines.append("NOTE: the benchmark JSON is partial (the run stopped before the end).")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bench_json")
    ap.add_argument("--epochs", type=float, default=10.0, help="epochs each training runs on average (default 10)")
    ap.add_argument("--per-training-overhead-s", type=float, default=0.05)
    ap.add_argument("--out", help="write the extrapolation as JSON")
    args = ap.parse_args(argv)
    path = Path(args.bench_json)
    if not path.is_file():
        print(f"no benchmark JSON at {path}", file=sys.stderr)
        return 1
    ex = extrapolate(json.loads(path.read_text()), args.epochs, args.per_training_overhead_s)
    for line in summary_lines(ex):
        print(line)
    if args.out:
        Path(args.out).write_text(json.dumps(ex, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
