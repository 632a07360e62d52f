"""The exported model: what a practitioner takes away after a run.

Three files, written by the ``export`` pipeline through the catalog (versioned):

* ``exported_model_weights`` (safetensors): a plain state dict keyed exactly as the
  library's own model expects, so that it loads without this package:

  - a torchvision architecture (:func:`evotune.backbones.torchvision_state_dict`):
    ``torchvision.models.resnet18(num_classes=K).load_state_dict(load_file(path))``;
    ``metadata["architecture"]["torchvision"]`` says how to build the model (``resnet10``
    has no torchvision builder: it is ``torchvision.models.resnet.ResNet(BasicBlock,
    [1, 1, 1, 1], num_classes=K)``);
  - a timm model (``backbone.arch: timm/<name>``, :func:`evotune.backbones.timm_models.timm_state_dict`):
    ``timm.create_model(name, num_classes=K).load_state_dict(load_file(path))``;
    ``metadata["architecture"]["timm"]`` gives the name, the classes, the create_model
    options of a variant and timm's ``pretrained_cfg`` of the architecture.

  Input: float32 images normalised as ``metadata["preprocessing"]`` says.
* ``exported_model_archive`` (``torch.export``, ``.pt2``): the same network with the
  normalisation inside (:class:`UInt8Classifier`), taking uint8 RGB ``[N, 3, crop, crop]``
  images (any N >= 1). ``torch.export.load(path).module()(images)`` gives logits; nothing
  of this package (nor torchvision, nor timm) is imported. Where ``torch.export`` cannot
  capture a model (a timm model with Python control flow on tensor values, say), the file
  says so instead (:class:`~evotune.io.ArchiveNotWritten`), the run goes on, and
  ``metadata["archive"]`` records why; the safetensors file is written either way.

  Why ``torch.export`` and not TorchScript: TorchScript is deprecated in PyTorch 2.x and
  no longer developed; ``torch.export`` captures the whole network as one graph of ATen
  operators (it fails loudly instead of falling back to Python), and its ``.pt2``
  archive is what PyTorch's deployment paths start from (AOTInductor, ExecuTorch, the
  ONNX exporter). Its limit: a ``.pt2`` archive is only guaranteed to load with the
  torch version that wrote it (``metadata["versions"]``); the safetensors file has no
  such limit.

  Why uint8 in: the caller then only has to decode, resize and crop (the steps any image
  library does); the float conversion and the mean/std, the step most easily got
  wrong, are the training code's own (:func:`evotune.training.normalize_uint8`).
* ``exported_model_metadata`` (JSON): class names in index order, the preprocessing
  (resize, crop, interpolation, mean, std), the architecture and how to construct it, the
  genome with its learning rates, the chosen seed and why, its test metrics, the versions
  of torch and torchvision, and a SHA-256 of the weights (:func:`weights_fingerprint`).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import importlib.metadata
import json
import platform
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .backbones import (
    StagedModel,
    construct_from_description,
    to_torchvision,
    torchvision_description,
    torchvision_state_dict,
)
from .backbones.timm_models import is_timm, timm_description, timm_from_description, timm_state_dict, to_timm
from .io import ArchiveNotWritten
from .retraining import TrainedRun, TrainedVariant
from .training import normalize_uint8

__all__ = ["EXPORT_FORMAT", "LIBRARIES", "ArchiveNotWritten", "PlainModel", "UInt8Classifier", "build_metadata",
           "compare_logits", "export_archive", "model_from_export", "plain_model", "select_run", "weights_fingerprint"]

EXPORT_FORMAT = "evotune-export-v1"

#: Exported logits may differ from the in-project model's by at most this much
#: (times max(1, largest |logit|)); the archive and the torchvision model run the same
#: kernels on CPU, so in practice they are bit-identical.
LOGIT_RTOL = 1e-4


class UInt8Classifier(nn.Module):
    """``model`` behind the training input normalisation: uint8 RGB ``[N, 3, S, S]`` -> logits."""

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor([float(v) for v in mean], dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor([float(v) for v in std], dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, images: Tensor) -> Tensor:  # noqa: D102
        return self.model(normalize_uint8(images, self.mean, self.std))


def export_archive(model: nn.Module, mean: Sequence[float], std: Sequence[float], crop_size: int) -> torch.export.ExportedProgram:
    """``torch.export`` of ``UInt8Classifier(model)`` in eval mode, batch size dynamic (>= 1)."""
    wrapper = UInt8Classifier(model, mean, std).eval()
    example = torch.zeros((2, 3, int(crop_size), int(crop_size)), dtype=torch.uint8)  # 2: not specialised to 1
    batch = torch.export.Dim("batch", min=1)
    with torch.no_grad():
        return torch.export.export(wrapper, (example,), dynamic_shapes={"images": {0: batch}})


#: the libraries whose own model an export's weights load into (the key of ``metadata["architecture"]``)
LIBRARIES = ("torchvision", "timm")


@dataclass(frozen=True)
class PlainModel:
    """A trained :class:`StagedModel` as its library's own model: what the export writes."""

    library: str  # one of LIBRARIES
    description: dict  # how to build it: torchvision_description / timm_description
    weights: dict  # its state dict, keyed as that model expects (CPU, contiguous)
    module: nn.Module  # the model itself (CPU), holding ``weights``, in the staged model's train/eval mode


def plain_model(model: StagedModel) -> PlainModel:
    """``model`` as a plain torchvision or timm model (both checked to load ``weights`` strictly)."""
    if is_timm(model.arch):
        module = to_timm(model)
        config = json.loads(json.dumps(dict(getattr(module, "pretrained_cfg", None) or {}), default=str))
        description = {**timm_description(model), "pretrained_cfg": config,
                       "pretrained_cfg_note": "timm's config of the architecture's default pretrained weights (their "
                                              "input size, interpolation, mean/std, 1000 classes); this model's own "
                                              "classes and input are `classes` and `preprocessing`"}
        return PlainModel("timm", description, timm_state_dict(model), module)
    return PlainModel("torchvision", torchvision_description(model), torchvision_state_dict(model), to_torchvision(model))


def try_export_archive(module: nn.Module, mean: Sequence[float], std: Sequence[float], crop_size: int,
                       ) -> torch.export.ExportedProgram | ArchiveNotWritten:
    """:func:`export_archive`, or an :class:`ArchiveNotWritten` saying why ``torch.export`` failed."""
    try:
        return export_archive(module, mean, std, crop_size)
    except Exception as exc:  # noqa: BLE001 - any capture failure: the weights are exported anyway
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return ArchiveNotWritten(f"torch.export could not capture the model: {type(exc).__name__}: {first}"[:2000])


def weights_fingerprint(state_dict: Mapping[str, Tensor]) -> str:
    """SHA-256 over the sorted keys, dtypes, shapes and bytes of a state dict: ties the
    metadata to the weights file it was written with."""
    h = hashlib.sha256()
    for key in sorted(state_dict):
        t = state_dict[key].detach().to("cpu").contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover
        return None


def library_versions() -> dict[str, str | None]:
    import torchvision

    return {
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "timm": _version("timm"),
        "safetensors": _version("safetensors"),
        "evotune": _version("evotune"),
        "python": platform.python_version(),
    }


def model_from_export(weights: Mapping[str, Tensor], metadata: Mapping[str, Any]) -> nn.Module:
    """The torchvision or timm model of an export (CPU, eval mode), built from its metadata and
    loaded with its safetensors state dict (strict). Raises ``ValueError`` when the two
    files do not belong together; a timm export without timm installed raises
    :class:`~evotune.backbones.UnknownArchitectureError` saying how to install it."""
    if metadata.get("format") != EXPORT_FORMAT:
        raise ValueError(
            f"The model metadata has format {metadata.get('format')!r}, expected {EXPORT_FORMAT!r}: "
            "it was not written by this project's export node."
        )
    expected = metadata.get("weights_sha256")
    if expected and weights_fingerprint(weights) != expected:
        raise ValueError(
            "The exported weights do not match the metadata (their SHA-256 differs): the two files come "
            "from different exports. Load both from the same version (predict.model_version)."
        )
    architecture = metadata["architecture"]
    if "timm" in architecture:  # timm's own init on the CPU: non-persistent buffers are set as timm sets them
        model = timm_from_description(architecture["timm"])
    else:
        with torch.device("meta"):
            model = construct_from_description(architecture["torchvision"])
        model = model.to_empty(device="cpu")
    model.load_state_dict(dict(weights), strict=True)
    return model.eval()


def select_run(retrained: TrainedVariant, selection: str, seed: int | None) -> TrainedRun:
    """The retrained run to export: ``best_val`` = the best validation macro accuracy (ties:
    the first seed in ``retrain.seeds`` order), ``seed`` = the run of ``export.seed``.
    Diverged runs (no weights) are never chosen."""
    runs = [r for r in retrained.runs if r.state_dict is not None]
    if not runs:
        raise ValueError("Every retrained seed diverged: there is no model to export.")
    if selection == "best_val":
        return max(runs, key=lambda r: float(r.best_val_acc))  # max keeps the first of equals
    if selection == "seed":
        for r in runs:
            if int(r.seed) == int(seed):
                return r
        raise ValueError(
            f"export.seed is {seed}, but the retrained seeds with weights are {[int(r.seed) for r in runs]} "
            "(retrain.seeds); pick one of them."
        )
    raise ValueError(f"export.selection must be 'best_val' or 'seed', got {selection!r}")


@torch.no_grad()
def compare_logits(reference: Tensor, other: Tensor) -> dict[str, Any]:
    """How far ``other``'s logits are from ``reference``'s: max abs difference, the
    tolerance, and the images whose argmax differs although the reference's top two
    logits are further apart than the tolerance (a real disagreement, not a near-tie)."""
    reference, other = reference.float(), other.float()
    tol = LOGIT_RTOL * max(1.0, float(reference.abs().max()) if reference.numel() else 1.0)
    diff = float((reference - other).abs().max()) if reference.numel() else 0.0
    differ = reference.argmax(1) != other.argmax(1)
    if reference.shape[1] > 1:
        top2 = reference.topk(2, dim=1).values
        clear = (top2[:, 0] - top2[:, 1]) > 2 * tol
    else:  # pragma: no cover - one class
        clear = torch.ones_like(differ)
    return {
        "max_abs_logit_diff": diff,
        "tolerance": tol,
        "argmax_differs": int(differ.sum()),
        "argmax_differs_clearly": int((differ & clear).sum()),
        "ok": diff <= tol and not bool((differ & clear).any()),
    }


def build_metadata(
    *,
    model: StagedModel,
    plain: PlainModel,
    archive: torch.export.ExportedProgram | ArchiveNotWritten,
    classes: Sequence[str],
    preprocessing: Mapping[str, Any],
    mean: Sequence[float],
    std: Sequence[float],
    run: TrainedRun,
    retrained: TrainedVariant,
    selection: str,
    test_metrics: Mapping[str, Any],
    verification: Mapping[str, Any],
    weights_sha256: str,
    backbone_source: str,
) -> dict:
    """The metadata JSON (plain values only): a dict of sections; a new field goes in its section
    (``preprocessing`` takes every key of the splits' preprocessing record as it is)."""
    crop = int(preprocessing["center_crop"])
    lib = plain.library
    if isinstance(archive, ArchiveNotWritten):
        archive_section: dict[str, Any] = {"written": False, "reason": archive.reason,
                                           "instead": "the safetensors weights (weights) load into the plain model"}
    else:
        archive_section = {
            "written": True,
            "format": "torch.export ExportedProgram (.pt2)",
            "load": "torch.export.load(path).module()",
            "input": f"uint8 [N, 3, {crop}, {crop}] RGB after decode/resize/crop (N >= 1); "
                     "the normalisation is inside",
            "output": f"logits [N, {len(classes)}] in the order of classes",
            "device": "cpu (for a GPU: torch.export.passes.move_to_device_pass(program, 'cuda'))",
        }
    genome = retrained.genome
    block_names = list(model.block_names)
    block_lrs = list(retrained.block_lrs)
    return {
        "format": EXPORT_FORMAT,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "classes": [str(c) for c in classes],
        "num_classes": len(classes),
        "architecture": {
            "name": model.arch,
            "library": lib,
            lib: dict(plain.description),
            "block_names": block_names,
            "backbone_source": backbone_source,
        },
        "preprocessing": {
            **dict(preprocessing),
            "mean": [float(v) for v in mean],
            "std": [float(v) for v in std],
            "normalize": "x = (uint8 / 255 - mean) / std, per RGB channel, float32",
        },
        "weights": {
            "format": "safetensors",
            "keys": f"{lib} state dict (load_state_dict(strict=True) on the model architecture.{lib}.python builds)",
            "input": f"float32 [N, 3, {crop}, {crop}] RGB, normalised as preprocessing.normalize",
            "output": f"logits [N, {len(classes)}] in the order of classes",
        },
        "archive": archive_section,
        "selection": {
            "rule": selection,
            "seed": int(run.seed),
            "candidates": [
                {"seed": int(r.seed), "best_val_macro_accuracy": float(r.best_val_acc), "diverged": bool(r.diverged)}
                for r in retrained.runs
            ],
        },
        "genome": {
            "key": genome.key,
            "mask": genome.mask,
            "genes": genome.genes,
            "threshold": genome.threshold,
            "search_fitness": genome.fitness,
            "force_head_trainable": genome.force_head_trainable,
            "learning_rates": {name: (None if lr is None else float(lr)) for name, lr in zip(block_names, block_lrs)},
            "lr_multipliers": genome.lr_multipliers,
        },
        "training": {
            "seed": int(run.seed),
            "best_val_macro_accuracy": float(run.best_val_acc),
            "best_epoch": int(run.best_epoch),
            "epochs_run": int(run.epochs_run),
            "device": retrained.device,
        },
        "test_metrics": dict(test_metrics),
        "export_check": dict(verification),
        "weights_sha256": weights_sha256,
        "versions": library_versions(),
    }
