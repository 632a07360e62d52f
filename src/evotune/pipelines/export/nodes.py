"""Node: export one retrained model (``export`` parameters, parameters_export.yml)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from ...backbones import (
    model_from_checkpoint,
    to_torchvision,
    torchvision_description,
    torchvision_state_dict,
)
from ...errors import ParameterError
from ...export import build_metadata, compare_logits, export_archive, select_run, weights_fingerprint
from ...lineage import check_same_lineage
from ...metrics import classification_metrics
from ...params import require_keys
from ...retraining import TrainedVariant
from ...training import DeviceData, Normalizer, TrainConfig, Trainer

if TYPE_CHECKING:
    from ...backbones.checkpoint import BackboneCheckpoint
    from ...data.split import Split

log = logging.getLogger(__name__)

SELECTIONS = ("best_val", "seed")


@dataclass(frozen=True)
class ExportParams:
    selection: str
    seed: int | None
    verify_images: int

    @classmethod
    def from_params(cls, params: Any) -> ExportParams:
        p = require_keys(params, "export", ("selection", "seed", "verify_images"))
        if p["selection"] not in SELECTIONS:
            raise ParameterError(f"export.selection must be one of {', '.join(SELECTIONS)}; got {p['selection']!r}.")
        seed = p["seed"]
        if p["selection"] == "seed" and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ParameterError(f"export.selection is 'seed', so export.seed must be one of retrain.seeds; got {seed!r}.")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ParameterError(f"export.seed must be null or an integer; got {seed!r}.")
        n = p["verify_images"]
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ParameterError(f"export.verify_images must be an integer >= 0 (0: no check); got {n!r}.")
        return cls(p["selection"], seed, n)


@torch.no_grad()
def _verify(model, tv_model, program, images: torch.Tensor, mean, std, batch: int = 64) -> dict:
    """The in-project model, the torchvision model and the archive on the same images (CPU)."""
    norm = Normalizer(mean, std, torch.device("cpu"), channels_last=False)
    archive = program.module()
    ref, tv, arc = [], [], []
    for start in range(0, len(images), batch):
        x = images[start:start + batch]
        ref.append(model(norm(x)))
        tv.append(tv_model(norm(x)))
        arc.append(archive(x))
    ref, tv, arc = torch.cat(ref), torch.cat(tv), torch.cat(arc)
    out = {"images": int(len(images)), "torchvision": compare_logits(ref, tv), "archive": compare_logits(ref, arc)}
    for what in ("torchvision", "archive"):
        if not out[what]["ok"]:
            raise RuntimeError(f"The exported {what} model does not reproduce the trained model on the test split: {out[what]}")
    return out


def _test_metrics(model, target_test: Split, backbone: BackboneCheckpoint, training_params: dict) -> dict:
    """The exported seed's test metrics, computed as evaluate_on_test computes them (the
    project's evaluation, on the training device)."""
    trainer = Trainer(model, TrainConfig.from_params(training_params), mean=backbone.mean, std=backbone.std)
    _, conf = trainer.evaluate(DeviceData.from_split(target_test, trainer.device))
    return {**classification_metrics(conf.cpu().numpy()), "n_test_images": int(len(target_test.labels))}


def export_best_model(
    backbone: BackboneCheckpoint, retrained_models: TrainedVariant, target_test: Split, export_params: dict, training_params: dict
) -> tuple[dict, torch.export.ExportedProgram, dict]:
    """The chosen retrained seed as a torchvision safetensors state dict, a torch.export archive
    (uint8 images in) and the metadata JSON; both exports are checked against the trained
    model on the first ``export.verify_images`` test images."""
    p = ExportParams.from_params(export_params)
    rerun = "kedro run --from-nodes retrain_best_genome (or the whole kedro run)"
    check_same_lineage("export_best_model", "dataset", {"backbone": backbone, "retrained_models": retrained_models,
                                                        "target_test": target_test}, rerun)
    check_same_lineage("export_best_model", "backbone_id", {"backbone": backbone, "retrained_models": retrained_models},
                       rerun)
    run = select_run(retrained_models, p.selection, p.seed)
    model = model_from_checkpoint(backbone)
    model.load_state_dict(run.state_dict)
    model.eval()

    preprocessing = target_test.preprocessing
    if preprocessing is None:
        raise ValueError(
            "target_test does not record its preprocessing (it was decoded by an older version): rerun "
            "`kedro run --from-nodes preprocess_splits` so that the export can state it."
        )
    crop = int(target_test.images.shape[-1])
    if int(preprocessing["center_crop"]) != crop:
        raise ValueError(f"target_test holds {crop}px images but records a {preprocessing['center_crop']}px crop.")
    mean, std = backbone.mean, backbone.std

    description = torchvision_description(model)
    weights = torchvision_state_dict(model)
    tv_model = to_torchvision(model).eval()
    program = export_archive(tv_model, mean, std, crop)
    if p.verify_images:
        verification = _verify(model, tv_model, program, target_test.images[: p.verify_images], mean, std)
        log.info("export check on %d test images: max |logit diff| torchvision %.2e, archive %.2e",
                 verification["images"], verification["torchvision"]["max_abs_logit_diff"],
                 verification["archive"]["max_abs_logit_diff"])
    else:
        verification = {"images": 0, "skipped": "export.verify_images is 0"}
    test_metrics = _test_metrics(model, target_test, backbone, training_params)  # last: moves the model

    metadata = build_metadata(
        model=model, description=description, classes=list(target_test.classes),
        preprocessing=preprocessing, mean=mean, std=std, run=run, retrained=retrained_models,
        selection=p.selection, test_metrics=test_metrics, verification=verification,
        weights_sha256=weights_fingerprint(weights), backbone_source=str(backbone.source),
    )
    log.info("exported %s (seed %d, %s): val macro acc %.4f, test macro acc %.4f",
             model.arch, run.seed, p.selection, run.best_val_acc, test_metrics["macro_accuracy"])
    return dict(weights), program, metadata
