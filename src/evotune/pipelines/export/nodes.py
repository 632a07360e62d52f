"""Node: export one retrained model, torchvision or timm (``export`` parameters, parameters_export.yml)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from ...backbones import model_from_checkpoint
from ...backbones.checkpoint import BackboneCheckpoint
from ...data.split import Split
from ...errors import ParameterError
from ...export import (
    ArchiveNotWritten,
    build_metadata,
    compare_logits,
    plain_model,
    select_run,
    try_export_archive,
    weights_fingerprint,
)
from ...lineage import check_same_lineage
from ...metrics import classification_metrics
from ...params import require_keys
from ...retraining import TrainedVariant
from ...training import DeviceData, Normalizer, TrainConfig, Trainer

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
def _verify(model, plain, program, images: torch.Tensor, mean, std, batch: int = 64) -> dict:
    """The in-project model, the plain (torchvision or timm) model and the archive, when there is
    one, on the same images (CPU)."""
    norm = Normalizer(mean, std, torch.device("cpu"), channels_last=False)
    archive = None if isinstance(program, ArchiveNotWritten) else program.module()
    ref, own, arc = [], [], []
    for start in range(0, len(images), batch):
        x = images[start:start + batch]
        ref.append(model(norm(x)))
        own.append(plain.module(norm(x)))
        if archive is not None:
            arc.append(archive(x))
    ref, own = torch.cat(ref), torch.cat(own)
    out = {"images": int(len(images)), plain.library: compare_logits(ref, own)}
    if archive is not None:
        out["archive"] = compare_logits(ref, torch.cat(arc))
    for what in (plain.library, "archive"):
        if what in out and not out[what]["ok"]:
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
) -> tuple[dict, torch.export.ExportedProgram | ArchiveNotWritten, dict]:
    """The chosen retrained seed as a safetensors state dict of its library's own model (torchvision
    or timm), a torch.export archive (uint8 images in; where torch.export cannot capture the model,
    an :class:`ArchiveNotWritten` saying why) and the metadata JSON; the exports are checked against
    the trained model on the first ``export.verify_images`` test images."""
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

    plain = plain_model(model)
    plain.module.eval()
    program = try_export_archive(plain.module, mean, std, crop)
    if isinstance(program, ArchiveNotWritten):
        log.warning("no torch.export archive for %s (%s); the safetensors weights and the metadata are exported",
                    model.arch, program.reason)
    if p.verify_images:
        verification = _verify(model, plain, program, target_test.images[: p.verify_images], mean, std)
        log.info("export check on %d test images: max |logit diff| %s %.2e, archive %s", verification["images"],
                 plain.library, verification[plain.library]["max_abs_logit_diff"],
                 f"{verification['archive']['max_abs_logit_diff']:.2e}" if "archive" in verification else "not written")
    else:
        verification = {"images": 0, "skipped": "export.verify_images is 0"}
    test_metrics = _test_metrics(model, target_test, backbone, training_params)  # last: moves the model

    weights = plain.weights
    metadata = build_metadata(
        model=model, plain=plain, archive=program, classes=list(target_test.classes),
        preprocessing=preprocessing, mean=mean, std=std, run=run, retrained=retrained_models,
        selection=p.selection, test_metrics=test_metrics, verification=verification,
        weights_sha256=weights_fingerprint(weights), backbone_source=str(backbone.source),
    )
    log.info("exported %s (seed %d, %s): val macro acc %.4f, test macro acc %.4f",
             model.arch, run.seed, p.selection, run.best_val_acc, test_metrics["macro_accuracy"])
    return dict(weights), program, metadata
