"""A real (tiny) export for the export and predict tests: retrain -> test -> export nodes,
the files written by the project's catalog dataset classes.

A plain helper module: what it needs from the test fixtures (conf/base's parameters, the tiny
splits and backbone checkpoints) comes in as arguments (see conftest's ``make_export`` fixture)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from kedro_datasets.json import JSONDataset

from evotune.backbones import BackboneCheckpoint, build_model, get_arch, model_from_checkpoint
from evotune.data.preprocess import preprocessing_record
from evotune.io import SafetensorsDataset, TorchExportDataset
from evotune.pipelines.export.nodes import export_best_model
from evotune.pipelines.retrain.nodes import evaluate_on_test, retrain_best_genome
from evotune.retraining import TrainedRun, TrainedVariant
from evotune.search.records import GenomeRecord, genome_record
from evotune.training import Normalizer

#: conf/base's `training` with these values
TRAINING = {"epochs": 2, "patience": 2, "batch_size": 16, "eval_batch_size": 64, "device": "cpu"}
EXPORT = {"selection": "best_val", "seed": None, "verify_images": 256}


@dataclass
class Export:
    arch: str
    backbone: BackboneCheckpoint
    retrained: TrainedVariant
    test: dict
    weights: dict
    metadata: dict
    files: dict  # weights / archive / metadata -> Path
    test_metrics_per_seed: object  # evaluate_on_test's table

    def project_logits(self, images: torch.Tensor) -> torch.Tensor:
        """The in-project model of the exported seed (StagedModel + the training normalisation)."""
        seed = self.metadata["selection"]["seed"]
        run = next(r for r in self.retrained.runs if r.seed == seed)
        model = model_from_checkpoint(self.backbone)
        model.load_state_dict(run.state_dict)
        model.eval()
        norm = Normalizer(self.backbone.mean, self.backbone.std, torch.device("cpu"), channels_last=False)
        with torch.no_grad():
            return model(norm(images))


def _untrained_runs(model, genome: GenomeRecord, seeds) -> TrainedVariant:
    """Runs as retrain_best_genome returns them, without training: the random weights with
    random batch-norm statistics (so that eval mode uses them), a different draw per seed."""
    runs = []
    head = f"stages.{model.head_index}."
    for i, seed in enumerate(seeds):
        g = torch.Generator().manual_seed(int(seed))
        state = {}
        for key, v in model.state_dict().items():
            if key.startswith(head):  # a strong random head: the predictions differ between images
                v = torch.randn(v.shape, generator=g) * 3.0
            elif key.endswith("running_mean"):
                v = torch.randn(v.shape, generator=g) * 0.1
            elif key.endswith("running_var"):
                v = torch.rand(v.shape, generator=g) + 0.5
            elif v.is_floating_point():
                v = v + torch.randn(v.shape, generator=g) * 0.01
            state[key] = v.clone()
        runs.append(TrainedRun(seed=int(seed), state_dict=state, best_val_acc=0.5 + 0.1 * i, best_epoch=1,
                               epochs_run=1, history=[], seconds=0.0, diverged=False))
    return TrainedVariant(method="biotune", variant="biotune", params={}, genome=genome,
                          block_lrs=[1e-3 * 10 ** (2 * (0.8 - 0.5))] * len(genome.block_names), trainable_params=1,
                          total_params=1, device="cpu", runs=runs, dataset=genome.dataset,
                          backbone_id=genome.backbone_id, created="2026-01-01T00:00:00Z")


def make_export(folder: Path, arch: str = "resnet10", num_classes: int = 4, size: int = 32, train: bool = True, *,
                base_parameters: dict, make_split, backbone_checkpoint) -> Export:
    """``train=False`` skips the retrain (see :func:`_untrained_runs`); the export is the real node either way.
    ``base_parameters``: conf/base's parameters; ``make_split``, ``backbone_checkpoint``: the conftest fixtures'."""
    training = {**base_parameters["training"], **TRAINING}
    torch.manual_seed(0)
    spec = get_arch(arch)
    model = build_model(arch, num_classes)
    backbone = backbone_checkpoint(model, num_classes, input_size=size, resize_size=size,
                                   mean=list(spec.mean), std=list(spec.std), source="random init (test)")
    train_split, val = make_split(6, num_classes, size, seed=1), make_split(3, num_classes, size, seed=2)
    test = make_split(5, num_classes, size, seed=3)
    for split in (train_split, val, test):
        split.preprocessing = preprocessing_record(size, size)
        split.classes = [f"class_{k}" for k in range(num_classes)]
    genome = genome_record([0.8] * spec.num_blocks + [0.5], fitness=0.5, key="test", backbone=backbone,
                           block_names=list(spec.block_names), base_lr=training["base_lr"], force_head=True,
                           study_name="test", storage=None, evaluations=1, trainings=1, device="cpu",
                           search_seconds=0.0, created="2026-01-01T00:00:00Z")
    if train:
        retrained = retrain_best_genome(backbone, train_split, val, genome, {"seeds": [3, 4], "training": {}}, training)
    else:
        retrained = _untrained_runs(model, genome, [3, 4])
    _, per_seed = evaluate_on_test(backbone, retrained, test, training)
    weights, program, metadata = export_best_model(backbone, retrained, test, EXPORT, training)
    files = {"weights": folder / "model.safetensors", "archive": folder / "model.pt2",
             "metadata": folder / "model.json"}
    SafetensorsDataset(filepath=str(files["weights"])).save(weights)
    TorchExportDataset(filepath=str(files["archive"])).save(program)
    JSONDataset(filepath=str(files["metadata"])).save(metadata)
    return Export(arch, backbone, retrained, test, weights, metadata, files, per_seed)


def save_png(images: torch.Tensor, folder: Path, prefix: str = "img") -> list[Path]:
    """uint8 [N, 3, S, S] -> PNG files (lossless: decoding them gives the same uint8 images back)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, img in enumerate(images):
        path = folder / f"{prefix}_{i:03d}.png"
        Image.fromarray(np.ascontiguousarray(img.permute(1, 2, 0).numpy()), "RGB").save(path)
        paths.append(path)
    return paths
