"""Is the embedded task a real transfer problem? Measures it on the pipeline's own artifacts.

Trains, on the target splits of the last `kedro run` (data/05_model_input) and with the
project's training loop and parameters (`training`):

* full fine-tuning of the source-pretrained backbone (`backbone`, from `source_model`),
* linear probing of the same backbone (only the head),
* the same architecture trained from scratch (random init, every block),

once per seed, and prints the test macro accuracy of each (mean +- std).

    python scripts/transfer_check.py [--seeds 684 559 629] [--env base]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project

from evotune.backbones import BackboneCheckpoint, build_model, make_checkpoint, model_from_checkpoint
from evotune.lineage import check_same_lineage
from evotune.metrics import classification_metrics
from evotune.training import DeviceData, TrainConfig, Trainer, TrainingPlan

ROOT = Path(__file__).resolve().parents[1]


def run(ckpt: BackboneCheckpoint, lrs_for, cfg: TrainConfig, data: dict, seeds: list[int]) -> list[float]:
    accs = []
    for seed in seeds:
        trainer = Trainer(model_from_checkpoint(ckpt), cfg, mean=ckpt.mean, std=ckpt.std)
        train, val, test = (DeviceData.from_split(data[k], trainer.device) for k in ("train", "val", "test"))
        res = trainer.train(TrainingPlan(lrs_for(trainer.model)), train, val, seed=seed, keep_best_state=True)
        trainer.model.load_state_dict(res.best_state)
        _, conf = trainer.evaluate(test)
        accs.append(classification_metrics(conf.cpu().numpy())["macro_accuracy"])
    return accs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[684, 559, 629])
    ap.add_argument("--env", default=None)
    ap.add_argument("--out", type=Path, default=None, help="also write the table as JSON")
    args = ap.parse_args()
    bootstrap_project(ROOT)
    with KedroSession.create(project_path=ROOT, env=args.env) as session:
        context = session.load_context()
        catalog, params = context.catalog, context.params
        backbone = catalog.load("backbone")
        data = {k: catalog.load(f"target_{k}") for k in ("train", "val", "test")}
    check_same_lineage("transfer_check", "dataset", {"backbone": backbone, **{f"target_{k}": v for k, v in data.items()}},
                       "kedro run (the backbone and the target splits of one run)")
    cfg = TrainConfig.from_params(params["training"])
    torch.manual_seed(0)
    scratch_model = build_model(backbone.arch, backbone.num_classes, weights=None)
    scratch = make_checkpoint(scratch_model, num_classes=backbone.num_classes, input_size=backbone.input_size,
                              resize_size=backbone.resize_size, mean=backbone.mean, std=backbone.std,
                              source="random init")
    rows = []
    methods = {
        "full fine-tuning (source-pretrained)": (backbone, lambda m: [cfg.base_lr] * m.num_blocks),
        "linear probing (source-pretrained)": (backbone, lambda m: [None] * (m.num_blocks - 1) + [cfg.base_lr]),
        "from scratch (random init)": (scratch, lambda m: [cfg.base_lr] * m.num_blocks),
    }
    print(f"target: {len(data['train'].labels)} train / {len(data['val'].labels)} val / "
          f"{len(data['test'].labels)} test images, {len(data['train'].classes)} classes; "
          f"{backbone.arch}, seeds {args.seeds}")
    for name, (ckpt, lrs) in methods.items():
        t0 = time.perf_counter()
        accs = run(ckpt, lrs, cfg, data, args.seeds)
        rows.append({"method": name, "test_macro_acc_mean": float(np.mean(accs)),
                     "test_macro_acc_std": float(np.std(accs, ddof=0)),  # population std, as the authors
                     "seconds": time.perf_counter() - t0})
        print(f"{name:40s} {100 * np.mean(accs):6.2f} +- {100 * rows[-1]['test_macro_acc_std']:.2f} "
              f"({rows[-1]['seconds']:.0f}s)", flush=True)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    import sys

    from evotune.errors import script_main

    sys.exit(script_main(main))
