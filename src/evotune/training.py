"""The one training loop of the project.

Every method (a BioTune genome, full fine-tuning, linear probing, the baselines)
is a :class:`TrainingPlan` handed to :func:`train_plan`: which blocks train, at
what learning rate, plus optional hooks (a penalty such as L2-SP, a per-epoch
learning-rate rule such as Auto-RGN, model surgery such as LoRA). No method
owns a copy of the loop. A plan's ``prepare`` returns how to undo what it changed
(:data:`Undo`); the :class:`Trainer` keeps it and undoes the change when the training
ends, so the model it holds is the pristine architecture between trainings.

What makes one evaluation cheap (SPEC section 8, issue 5), without changing
what it computes:

* Data arrive decoded and resized once, as uint8 tensors (``evotune.data``);
  they are moved to the device once and normalised there, per batch.
* **Batch-norm policy** (``training.frozen_bn``, :func:`set_block_modes`). A frozen
  block's parameters get no gradient. With ``eval`` (conf/base) it is frozen
  completely: it runs in eval mode, so its batch-norm running statistics and its
  dropout do not change. With ``train`` (conf/paper, the authors' code, SPEC
  section 4b) it follows the model's train mode during the training epochs, as
  trained blocks do: its batch norm normalises with batch statistics and moves its
  running statistics to the target data, its dropout drops. Evaluation always runs
  the whole model in eval mode. A plan's ``eval_mode_blocks`` run in eval mode
  under both policies.
* **Frozen prefix** (:meth:`TrainingPlan.frozen_prefix`, :func:`mode_dependent`).
  The frozen blocks before the first trained block compute a fixed function of each
  image when they run in eval mode (``eval``), or when nothing in them depends on the
  mode (``train``: no batch norm, no dropout, no stochastic depth, no Inception aux
  classifier). :class:`PrefixCache` computes that prefix once per (data, prefix
  length) and every epoch, seed and genome with that prefix reuses it. Anywhere else
  (``train`` with batch norm in the first frozen block, e.g. a ResNet's stem) the
  prefix runs in every step, as in the naive loop.
* bf16 autocast and channels-last memory format (``training.amp`` and
  ``training.channels_last``): ``auto`` turns them on on CUDA only, ``true`` on any
  device. The same code applies them on CPU and on CUDA (torch has bf16 autocast on
  both), so the CPU tests run it; only the defaults differ per device.
* No per-sample Python: shuffling is one ``randperm`` per epoch, metrics are
  computed with ``bincount`` on the device. (The one exception is augmentation,
  ``training.augment``: torchvision's v2 transforms draw one crop per image, so
  :class:`Augmenter` applies them image by image, on the uint8 tensors on the device.)
* **Augmentation** (``training.augment``: ``none``, ``flip``, ``standard`` = random
  resized crop + horizontal flip, :class:`Augmenter`). The training batches are
  augmented; evaluation never is. An augmented image is a new input, so the frozen
  prefix of the *training* batches is recomputed at every step (no cache); the
  validation images stay un-augmented and keep their exact cached prefix.

Every random draw of a training comes from its seed: the fresh head (a CPU generator
seeded with the seed, :func:`~evotune.backbones.redraw_head`), the batch order (another
one, ``torch.randperm`` once per epoch), and everything drawn from torch's global
generators (dropout, EfficientNet's stochastic depth, a plan's ``prepare``), and the
augmentation's draws (a generator state of their own, seeded from the seed, :class:`Augmenter`): a training
runs inside :func:`fork_global_rng`, with the global generators seeded by
:func:`seed_global_rng` from :func:`global_rng_seed`, so it gives the same result
whatever ran before it in the process, and the global generators are as they were
when it ends.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.models.swin_transformer import ShiftedWindowAttention
from torchvision.ops import StochasticDepth

from .backbones import StagedModel, redraw_head
from .backbones.staged import _AuxStage
from .data.split import Split
from .errors import ParameterError
from .params import from_params, section, where

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- config


#: the values of ``training.frozen_bn`` (see :func:`set_block_modes`)
FROZEN_BN_POLICIES = ("eval", "train")

#: the values of ``training.augment`` (see :class:`Augmenter`)
AUGMENTATIONS = ("none", "flip", "standard")


@dataclass(frozen=True)
class TrainConfig:
    """How one training run goes: the ``training`` parameters (SPEC section 3), every
    key required (``conf/base/parameters_training.yml`` holds the defaults)."""

    epochs: int
    patience: int
    batch_size: int
    eval_batch_size: int
    base_lr: float
    cosine_t_max: int
    weight_decay: float
    device: str
    #: bf16 autocast: "auto" = on CUDA only, true = on any device (CPU too), false = off
    amp: bool | str
    #: channels-last memory format: "auto" = on CUDA only, true = on any device, false = off
    channels_last: bool | str
    cache_frozen_prefix: bool
    #: what a frozen block's batch norm (and dropout) does during training: "eval" (eval mode,
    #: pretrained running statistics kept) or "train" (the model's train mode, as the authors)
    frozen_bn: str
    #: Adam's fused kernel (one pass over every parameter); the same update rule as
    #: the default implementation, which on CPU costs more than the convolutions
    fused_optimizer: bool
    prefix_cache_max_gb: float
    #: torch's CPU threads for this process (None: torch's default, one per core); set it
    #: so that search workers x threads = cores when several workers share a CPU
    cpu_threads: int | None
    aux_loss_weight: float
    #: augmentation of the training batches: none, flip (horizontal) or standard (random resized
    #: crop + horizontal flip), torchvision v2 on the uint8 images on the device (:class:`Augmenter`)
    augment: str

    @classmethod
    def from_params(cls, params: dict[str, Any], path: str = "training") -> TrainConfig:
        """The ``training`` parameter group (or another group of the same keys, named by ``path``)."""
        cfg = from_params(cls, params, path)
        problems = [f"{path}.{name} must be >= 1, got {getattr(cfg, name)}"
                    for name in ("epochs", "patience", "batch_size", "eval_batch_size", "cosine_t_max")
                    if getattr(cfg, name) < 1]
        if not cfg.base_lr > 0:
            problems.append(f"{path}.base_lr must be > 0, got {cfg.base_lr}")
        if cfg.weight_decay < 0 or cfg.prefix_cache_max_gb < 0 or cfg.aux_loss_weight < 0:
            problems.append(f"{path}.weight_decay, prefix_cache_max_gb and aux_loss_weight must be >= 0")
        if cfg.cpu_threads is not None and cfg.cpu_threads < 1:
            problems.append(f"{path}.cpu_threads must be null or an integer >= 1, got {cfg.cpu_threads!r}")
        for name in ("amp", "channels_last"):
            if getattr(cfg, name) not in (True, False, "auto"):
                problems.append(f"{path}.{name} must be auto, true or false, got {getattr(cfg, name)!r}")
        if cfg.frozen_bn not in FROZEN_BN_POLICIES:
            problems.append(f"{path}.frozen_bn must be eval (frozen blocks run in eval mode: their batch-norm "
                            f"statistics stay pretrained) or train (frozen blocks follow the model's train mode, "
                            f"as in the authors' code), got {cfg.frozen_bn!r}")
        if cfg.augment not in AUGMENTATIONS:
            problems.append(f"{path}.augment must be none, flip (horizontal flip) or standard (random resized crop "
                            f"+ horizontal flip), got {cfg.augment!r}")
        if problems:
            raise ParameterError("; ".join(problems))
        return cfg

    @classmethod
    def with_overrides(cls, training_params: dict[str, Any], overrides: Any, path: str) -> TrainConfig:
        """The shared ``training`` group updated with a stage's own overrides (``path``, a mapping
        of some ``training`` keys, e.g. ``retrain.training``)."""
        section(overrides, path)
        unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ParameterError(f"Unknown parameter(s) {', '.join(f'{path}.{k}' for k in unknown)}: "
                                 f"{path} may override keys of `training` ({where('training')}).")
        return cls.from_params({**section(training_params, "training"), **overrides}, "training")

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with ``changes`` (for scripts and tests that vary a few settings)."""
        return dataclasses.replace(self, **changes)


def device_setting(value: bool | str, device: torch.device) -> bool:
    """``training.amp`` / ``training.channels_last`` on ``device``: ``auto`` means CUDA only."""
    if value == "auto":
        return device.type == "cuda"
    if value in (True, False):
        return bool(value)
    raise ValueError(f"expected auto, true or false, got {value!r}")


#: what ``auto`` tries, in order (the first available wins; the CPU always is)
AUTO_DEVICES = ("cuda", "mps", "cpu")


def _available(device_type: str) -> bool:
    """Whether torch can use ``device_type`` here (``mps``: Apple's Metal GPUs)."""
    if device_type == "cuda":
        return torch.cuda.is_available()
    if device_type == "mps":
        return torch.backends.mps.is_available()
    return True


def resolve_device(name: str = "auto", param: str = "training.device") -> torch.device:
    """``auto`` picks CUDA when present, else Apple's MPS, else the CPU (:data:`AUTO_DEVICES`).
    An explicit device that is not there is an error naming ``param``, the parameter that set it."""
    if name in (None, "", "auto"):
        return torch.device(next(d for d in AUTO_DEVICES if _available(d)))
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as exc:
        raise ParameterError(f"{param} is '{name}', not a torch device; use 'auto', 'cpu', 'cuda[:i]' or 'mps'.") from exc
    if not _available(device.type):
        what = {"cuda": "CUDA", "mps": "MPS (Apple's Metal GPUs)"}.get(device.type, device.type)
        raise ParameterError(
            f"{param} is '{name}' but {what} is not available here; "
            f"set {param} to 'auto' or 'cpu'."
        )
    return device


# --------------------------------------------------------------------------- randomness


def global_rng_seed(seed: int) -> int:
    """The seed of torch's global generators during a training with ``seed`` (a 64-bit value).

    Derived from ``seed`` rather than ``seed`` itself, so that dropout's stream is not the
    stream of the batch-order generator, which is seeded with ``seed``."""
    digest = hashlib.sha256(f"evotune.training.global_rng:{int(seed)}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def _cuda_indices(device: torch.device) -> list[int]:
    if device.type != "cuda":
        return []
    return [device.index if device.index is not None else torch.cuda.current_device()]


@contextlib.contextmanager
def fork_global_rng(device: torch.device) -> Iterator[None]:
    """Inside: torch's global generators (the CPU one, and ``device``'s when it is a CUDA device or
    Apple's MPS) may be seeded and drawn from; when the block ends they are as they were before it."""
    with torch.random.fork_rng(devices=_cuda_indices(device)):
        mps_state = torch.mps.get_rng_state() if device.type == "mps" else None
        try:
            yield
        finally:
            if mps_state is not None:
                torch.mps.set_rng_state(mps_state)


def seed_global_rng(seed: int, device: torch.device) -> None:
    """Seed torch's global CPU generator, and ``device``'s when it is a CUDA device or MPS, from
    ``seed`` (:func:`global_rng_seed`). Unlike ``torch.manual_seed`` it leaves other CUDA devices
    alone, so that it changes nothing outside :func:`fork_global_rng`."""
    value = global_rng_seed(seed)
    torch.default_generator.manual_seed(value)
    for index in _cuda_indices(device):
        torch.cuda.default_generators[index].manual_seed(value)
    if device.type == "mps":  # dropout and stochastic depth on MPS tensors draw from its generator
        torch.mps.manual_seed(value)


# --------------------------------------------------------------------------- data


@dataclass
class DeviceData:
    """A split held on the device as uint8 images plus labels."""

    images: Tensor  # uint8 [N, 3, S, S]
    labels: Tensor  # int64 [N]
    num_classes: int

    @classmethod
    def from_split(
        cls,
        split: Split,
        device: torch.device,
        *,
        num_classes: int | None = None,
    ) -> DeviceData:
        images, labels = split.images, split.labels
        n_cls = num_classes if num_classes is not None else len(split.classes)
        return cls(images.to(device), labels.to(device), n_cls)

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def normalize_uint8(x: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """uint8 images ``[N, 3, H, W]`` to the model's input: ``(x / 255 - mean) / std`` in float32.

    The one definition of the input normalisation: the training loop (:class:`Normalizer`)
    and the exported archive (``evotune.export.UInt8Classifier``) both call it.
    """
    return (x.float().div(255.0) - mean) / std


class Normalizer:
    """uint8 -> float, scaled to [0, 1] and standardised, on the device."""

    def __init__(self, mean, std, device: torch.device, channels_last: bool) -> None:
        self.mean = torch.tensor(mean, device=device, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, device=device, dtype=torch.float32).view(1, -1, 1, 1)
        self.channels_last = channels_last

    def __call__(self, x: Tensor) -> Tensor:
        x = normalize_uint8(x, self.mean, self.std)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x


def augment_seed(seed: int) -> int:
    """The seed of a training's augmentation draws (a 63-bit value derived from ``seed``, so that
    they are not the stream of the batch order or of dropout)."""
    digest = hashlib.sha256(f"evotune.training.augment:{int(seed)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class Augmenter:
    """``training.augment`` on a batch of uint8 images ``[B, 3, S, S]`` on the device, with
    torchvision's v2 transforms: ``flip`` a horizontal flip (p = 0.5), ``standard`` a random
    resized crop back to ``S`` (torchvision's defaults: scale 0.08-1, ratio 3/4-4/3, bilinear,
    antialiased) then the flip. The images were decoded once (resized, centre-cropped): the crop
    is drawn from that decoded image, not from the original file.

    Each image gets its own draw. The draws come from a CPU generator state of its own, seeded
    with :func:`augment_seed` of the training's seed and carried from batch to batch (torch's
    global CPU generator is forked around each batch), so a training is reproducible from its
    seed and its augmentation does not shift dropout's random stream, nor it this one.
    """

    def __init__(self, kind: str, seed: int) -> None:
        if kind not in AUGMENTATIONS or kind == "none":
            raise ValueError(f"no augmentation {kind!r}; valid: {', '.join(a for a in AUGMENTATIONS if a != 'none')}")
        self.kind = kind
        self._state = torch.Generator().manual_seed(augment_seed(seed)).get_state()
        self._transform: Callable[[Tensor], Tensor] | None = None

    def _make(self, size: int) -> Callable[[Tensor], Tensor]:
        from torchvision.transforms import v2

        flip = v2.RandomHorizontalFlip(p=0.5)
        if self.kind == "flip":
            return flip
        return v2.Compose([v2.RandomResizedCrop(size, antialias=True), flip])

    def __call__(self, images: Tensor) -> Tensor:
        if self._transform is None:
            self._transform = self._make(int(images.shape[-1]))
        with torch.random.fork_rng(devices=[]):  # the global CPU generator, as it was, afterwards
            torch.set_rng_state(self._state)
            out = torch.stack([self._transform(img) for img in images]) if len(images) else images
            self._state = torch.get_rng_state()
        return out


class PrefixCache:
    """Outputs of a frozen prefix of the network, computed once per image.

    Keyed by (data key, prefix length). Valid because a frozen prefix (as
    :meth:`TrainingPlan.frozen_prefix` defines it) computes the same function of each
    image, from the same pristine weights, in every evaluation that uses it, in training
    and at evaluation alike. Entries beyond ``max_bytes`` are not stored (they are
    computed per batch). Only un-augmented images are cached: with ``training.augment``
    the training batches are new images at every step, so their prefix is recomputed
    (:meth:`Trainer._train`); validation, never augmented, stays cached.
    """

    def __init__(self, max_bytes: float) -> None:
        self.max_bytes = max_bytes
        self._store: dict[tuple[Any, int], Tensor] = {}
        self.hits = 0
        self.misses = 0

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self._store.values())

    def get(self, key: Any, prefix: int, compute: Callable[[], Tensor | None]) -> Tensor | None:
        if (key, prefix) in self._store:
            self.hits += 1
            return self._store[(key, prefix)]
        self.misses += 1
        out = compute()
        if out is not None and self.nbytes + out.numel() * out.element_size() <= self.max_bytes:
            self._store[(key, prefix)] = out
        return out


# --------------------------------------------------------------------------- plans

#: Undoes a plan's change to the model (``TrainingPlan.prepare``'s return value).
Undo = Callable[[], None]


@dataclass
class TrainingPlan:
    """What a method trains.

    ``block_lrs[i]`` is block i's learning rate, or ``None`` when the block is
    frozen. Hooks (all optional) let baselines change the loss, the per-epoch
    learning rates or the model without a loop of their own.
    """

    block_lrs: list[float | None]
    name: str = "plan"
    #: model changes before the optimizer is built (e.g. LoRA adapters); returns their
    #: :data:`Undo` (None: nothing to undo), which the trainer calls when the training ends
    prepare: Callable[[StagedModel], Undo | None] | None = None
    #: optimizer parameter groups; default: one group per trained block
    param_groups: Callable[[StagedModel, list[float | None]], list[dict]] | None = None
    #: extra loss term added to cross-entropy (e.g. L2-SP)
    penalty: Callable[[StagedModel], Tensor] | None = None
    #: called once per training, after the optimizer is built: (model, optimizer);
    #: per-training state of the hooks (e.g. Auto-RGN's schedule factor) starts here
    on_train_start: Callable[[StagedModel, torch.optim.Optimizer], None] | None = None
    #: called at each epoch start with (model, optimizer, batch iterator factory)
    on_epoch_start: Callable[[StagedModel, torch.optim.Optimizer, Callable[[], Iterator]], None] | None = None
    #: blocks that run in eval mode in training too, whatever ``training.frozen_bn`` says and
    #: even when they have trainable parameters (LoRA: the backbone's batch norm stays pretrained)
    eval_mode_blocks: frozenset[int] = field(default_factory=frozenset)

    @property
    def trained_blocks(self) -> list[int]:
        return [i for i, lr in enumerate(self.block_lrs) if lr is not None]

    def frozen_prefix(self, model: StagedModel, frozen_bn: str) -> int:
        """Number of leading blocks whose output is a fixed function of each image, under the
        batch-norm policy ``frozen_bn`` (``training.frozen_bn``): what :class:`PrefixCache` may
        compute once. The one rule of when the cache applies.

        A block counts when it is frozen (no learning rate, no trainable parameter, not among
        ``eval_mode_blocks``) and, under ``train`` (where frozen blocks run in train mode and
        their batch-norm statistics move), holds no :func:`mode_dependent` module. Under
        ``eval`` frozen blocks run in eval mode, so every frozen block counts.
        """
        if frozen_bn not in FROZEN_BN_POLICIES:
            raise ValueError(f"frozen_bn must be one of {FROZEN_BN_POLICIES}, got {frozen_bn!r}")
        k = 0
        for i, stage in enumerate(model.stages):
            if self.block_lrs[i] is not None or i in self.eval_mode_blocks:
                break
            if any(p.requires_grad for p in stage.parameters()):
                break
            if frozen_bn == "train" and mode_dependent(stage):
                break
            k += 1
        return k


#: batch and instance norm, and dropout of every kind, by torch's public classes
NORM_MODULES = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d, torch.nn.SyncBatchNorm,
                torch.nn.InstanceNorm1d, torch.nn.InstanceNorm2d, torch.nn.InstanceNorm3d)
DROPOUT_MODULES = (torch.nn.Dropout, torch.nn.Dropout1d, torch.nn.Dropout2d, torch.nn.Dropout3d, torch.nn.AlphaDropout,
                   torch.nn.FeatureAlphaDropout)

#: the module types :func:`mode_dependent` looks for, each with the attributes whose value 0
#: makes it compute the same in both modes (None: always mode dependent)
MODE_DEPENDENT_TYPES: dict[type, tuple[str, ...] | None] = {
    **dict.fromkeys(NORM_MODULES, None),  # batch norm, and instance norm (with running statistics or not)
    **dict.fromkeys(DROPOUT_MODULES, ("p",)),  # dropout of every kind
    StochasticDepth: ("p",),  # EfficientNet, Swin, ConvNeXt
    torch.nn.MultiheadAttention: ("dropout",),  # torchvision's vision transformers
    ShiftedWindowAttention: ("dropout", "attention_dropout"),  # Swin (V1 and V2)
    _AuxStage: None,  # Inception's aux classifier: runs in train mode only
}


def _reads_mode(m: torch.nn.Module) -> bool:
    if type(m).__name__ == "DropPath" and hasattr(m, "drop_prob"):  # timm's stochastic depth (timm is optional)
        return float(m.drop_prob or 0) > 0
    for kind, rates in MODE_DEPENDENT_TYPES.items():
        if isinstance(m, kind):
            return rates is None or any(float(getattr(m, r)) > 0 for r in rates)
    return False


def mode_dependent(module: torch.nn.Module) -> bool:
    """Whether ``module`` (or a module inside it) computes or changes something else in train
    mode than in eval mode, or depends on the other images of its batch: batch and instance
    norm (``_NormBase``: batch statistics, running-statistics updates), dropout (``_DropoutNd``),
    torchvision's ``StochasticDepth`` and timm's ``DropPath``, the attention dropout of ``nn.MultiheadAttention`` and
    Swin's ``ShiftedWindowAttention``, and the Inception aux stage (which runs its classifier in
    train mode only): :data:`MODE_DEPENDENT_TYPES`. A dropout, stochastic depth or attention
    whose rates are all 0 computes the same in both modes and does not count (torchvision's
    ViTs have dropout 0). A frozen block holding none of them gives the same output in both
    modes (``tests/test_bn_policy.py`` checks that no other module of the registered
    architectures reads its mode).

    Under ``training.frozen_bn: train`` only blocks without such a module can be a cached
    frozen prefix (:meth:`TrainingPlan.frozen_prefix`). Norms without parameters or statistics
    of their own that work per image (``GroupNorm``, ``LayerNorm``) are not mode dependent.
    """
    return any(_reads_mode(m) for m in module.modules())


def default_param_groups(model: StagedModel, block_lrs: list[float | None]) -> list[dict]:
    groups = []
    for i, (stage, lr) in enumerate(zip(model.stages, block_lrs)):
        if lr is None:
            continue
        params = [p for p in stage.parameters() if p.requires_grad]
        if params:
            groups.append({"params": params, "lr": float(lr), "block": i})
    return groups


def make_optimizer(groups: list[dict], cfg: TrainConfig) -> torch.optim.Optimizer:
    """Adam over ``groups`` (SPEC section 3), with the fused kernel when ``cfg.fused_optimizer``.

    The fused kernel applies the same update as the default implementation in one
    pass per parameter group instead of a dozen elementwise passes per tensor; it
    changes only floating-point rounding. Measured on the 2-core CPU for the mixed
    genome: the default Adam step took half of each evaluation.
    """
    fused = bool(cfg.fused_optimizer) and all(
        p.is_floating_point() and p.device.type in ("cpu", "cuda") for g in groups for p in g["params"]
    )
    return torch.optim.Adam(groups, lr=cfg.base_lr, weight_decay=cfg.weight_decay, fused=fused or None)


def apply_freezing(model: StagedModel, plan: TrainingPlan) -> None:
    """Set ``requires_grad`` per block: trained blocks on, frozen blocks off."""
    if len(plan.block_lrs) != model.num_blocks:
        raise ValueError(
            f"The plan '{plan.name}' has {len(plan.block_lrs)} block learning rates but the model "
            f"{model.arch} has {model.num_blocks} blocks ({model.block_names})."
        )
    for stage, lr in zip(model.stages, plan.block_lrs):
        for p in stage.parameters():
            p.requires_grad_(lr is not None)


def set_block_modes(model: StagedModel, plan: TrainingPlan, training: bool, frozen_bn: str) -> None:
    """The batch-norm policy: the modes of the blocks during training (``training``) or evaluation.

    Trained blocks follow ``training``. Frozen blocks follow it too under ``frozen_bn="train"``
    (the authors' code: batch statistics, running statistics adapted to the target, dropout
    on), and run in eval mode under ``"eval"``. The plan's ``eval_mode_blocks`` run in eval
    mode under both policies. With ``training=False`` every block is in eval mode.

    Under ``"train"`` a frozen Inception ``AuxLogits`` block runs its classifier too (as
    torchvision's model in train mode does), so its loss term enters with
    ``training.aux_loss_weight`` and its gradient reaches the trained blocks before it.
    """
    if frozen_bn not in FROZEN_BN_POLICIES:
        raise ValueError(f"frozen_bn must be one of {FROZEN_BN_POLICIES}, got {frozen_bn!r}")
    model.train(training)
    if training:
        for i, stage in enumerate(model.stages):
            if i in plan.eval_mode_blocks or (plan.block_lrs[i] is None and frozen_bn == "eval"):
                stage.eval()


def plan_loss(model: StagedModel, plan: TrainingPlan, logits: Tensor, y: Tensor, aux_loss_weight: float) -> Tensor:
    """Cross-entropy, plus the Inception auxiliary head's (when it ran) and the plan's penalty."""
    loss = F.cross_entropy(logits.float(), y)
    for aux in model.aux_logits:
        loss = loss + aux_loss_weight * F.cross_entropy(aux.float(), y)
    if plan.penalty is not None:
        loss = loss + plan.penalty(model)
    return loss


# --------------------------------------------------------------------------- metrics


def confusion_matrix(pred: Tensor, target: Tensor, num_classes: int) -> Tensor:
    idx = target.long() * num_classes + pred.long()
    return torch.bincount(idx, minlength=num_classes * num_classes).view(num_classes, num_classes)


def macro_accuracy(conf: Tensor) -> float:
    """Class-balanced accuracy: mean recall over the classes present."""
    support = conf.sum(1)
    present = support > 0
    if not bool(present.any()):
        return 0.0
    conf, support, present = conf.cpu(), support.cpu(), present.cpu()  # float64 on the CPU (MPS has none)
    recall = conf.diag()[present].double() / support[present].double()
    return float(recall.mean())


# --------------------------------------------------------------------------- the loop


@dataclass
class TrainResult:
    best_val_acc: float  # macro accuracy on validation, best epoch
    best_epoch: int
    epochs_run: int
    history: list[dict]
    diverged: bool = False
    best_state: dict[str, Tensor] | None = None
    seconds: float = 0.0


class EarlyStopping:
    """Early stopping on validation macro accuracy (SPEC section 3), for every loop.

    The best epoch is the first one with the highest accuracy; training stops after
    ``patience`` epochs in a row without a strictly better one. With
    ``keep_best_state`` a CPU copy of the weights of the best epoch is kept.
    """

    def __init__(self, patience: int, keep_best_state: bool = False) -> None:
        self.patience = patience
        self.keep_best_state = keep_best_state
        self.best_acc, self.best_epoch, self.bad_epochs = -1.0, -1, 0
        self.best_state: dict[str, Tensor] | None = None

    def update(self, epoch: int, val_acc: float, model: torch.nn.Module) -> bool:
        """Record epoch ``epoch`` (1-based); True when training should stop."""
        if val_acc > self.best_acc:
            self.best_acc, self.best_epoch, self.bad_epochs = val_acc, epoch, 0
            if self.keep_best_state:
                self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
            return False
        self.bad_epochs += 1
        return self.bad_epochs >= self.patience

    def best_val_acc(self, diverged: bool) -> float:
        """What the run scores: 0 when it diverged."""
        return 0.0 if diverged else max(self.best_acc, 0.0)


class Trainer:
    """Holds what stays the same across evaluations: device, data, prefix cache.

    One ``Trainer`` serves a whole search: the pretrained state is kept in
    memory (``pristine``) and restored before every run. A plan's changes to the model
    (``TrainingPlan.prepare``) are undone by the trainer when its training ends.
    """

    def __init__(self, model: StagedModel, cfg: TrainConfig, *, mean, std, device=None) -> None:
        self.cfg = cfg
        self.device = device if isinstance(device, torch.device) else resolve_device(device or cfg.device)
        self.cuda = self.device.type == "cuda"
        if cfg.cpu_threads is not None and torch.get_num_threads() != cfg.cpu_threads:
            torch.set_num_threads(int(cfg.cpu_threads))  # process-wide, as torch has it
            log.info("torch CPU threads set to %d (training.cpu_threads)", cfg.cpu_threads)
        #: bf16 autocast and channels-last in this run (``auto``: on CUDA only; the default CPU
        #: run stays float32 and contiguous, bit for bit as before these settings existed)
        self.amp = device_setting(cfg.amp, self.device)
        self.channels_last = device_setting(cfg.channels_last, self.device)
        self.model = model.to(self.device)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.pristine = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.normalize = Normalizer(mean, std, self.device, self.channels_last)
        self.cache = PrefixCache(cfg.prefix_cache_max_gb * 1024**3)
        self._undo: Undo | None = None  # the running plan's, until its training ends
        if cfg.augment != "none":
            log.info("training batches augmented: %s (training.augment; %s), evaluation not; the frozen prefix of "
                     "training batches is recomputed at every step", cfg.augment,
                     "horizontal flip" if cfg.augment == "flip" else "random resized crop + horizontal flip")

    # -- helpers -----------------------------------------------------------------
    def _autocast(self):
        """bf16 autocast on this trainer's device type (CPU and CUDA alike) when ``amp``."""
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.amp)

    def reset(self, seed: int) -> None:
        """Restore the pretrained weights and draw a fresh head for ``seed``."""
        self.undo_plan()
        self.model.load_state_dict(self.pristine)
        redraw_head(self.model, seed)

    def _prefix_features(self, data: DeviceData, data_key: Any, prefix: int) -> Tensor | None:
        if prefix == 0 or not self.cfg.cache_frozen_prefix:
            return None

        def compute() -> Tensor:
            outs = []
            self.model.eval()
            with torch.no_grad(), self._autocast():
                for start in range(0, len(data), self.cfg.eval_batch_size):
                    x = self.normalize(data.images[start : start + self.cfg.eval_batch_size])
                    outs.append(self.model.forward_until(prefix, x))
            return torch.cat(outs)

        return self.cache.get(data_key, prefix, compute)

    def _inputs(self, data: DeviceData, feats: Tensor | None, idx: Tensor, prefix: int) -> tuple[Tensor, int]:
        """Batch input and the stage to start from."""
        if feats is not None:
            return feats[idx], prefix
        return self.normalize(data.images[idx]), 0

    @torch.no_grad()
    def predict(self, data: DeviceData, *, plan: TrainingPlan | None = None, data_key: Any = None) -> Tensor:
        """Class predictions for every image (eval mode)."""
        self.model.eval()
        prefix = plan.frozen_prefix(self.model, self.cfg.frozen_bn) if plan is not None and data_key is not None else 0
        feats = self._prefix_features(data, data_key, prefix) if prefix else None
        preds = []
        bs = self.cfg.eval_batch_size
        for start in range(0, len(data), bs):
            idx = torch.arange(start, min(start + bs, len(data)), device=self.device)
            x, s = self._inputs(data, feats, idx, prefix)
            with self._autocast():
                logits = self.model.forward_from(s, x)
            preds.append(logits.argmax(1))
        return torch.cat(preds) if preds else torch.empty(0, dtype=torch.long, device=self.device)

    def evaluate(self, data: DeviceData, **kw) -> tuple[float, Tensor]:
        pred = self.predict(data, **kw)
        conf = confusion_matrix(pred, data.labels, data.num_classes)
        return macro_accuracy(conf), conf

    # -- training --------------------------------------------------------------------
    def train(
        self,
        plan: TrainingPlan,
        train: DeviceData,
        val: DeviceData,
        *,
        seed: int,
        data_key: Any = None,
        keep_best_state: bool = False,
        progress: Callable[[dict], None] | None = None,
    ) -> TrainResult:
        """Train ``plan`` from the pretrained weights; early-stop on validation macro accuracy.

        ``data_key`` identifies (train, val) for the frozen-prefix cache; pass
        ``None`` to disable caching for this call.

        Every draw from torch's global generators (dropout, stochastic depth, the plan's
        ``prepare``) comes from ``seed``: the training runs inside :func:`fork_global_rng`,
        seeded by :func:`seed_global_rng` before the head is redrawn, so its result does not
        depend on what ran before it, and the global generators are as they were when it ends.
        """
        t0 = time.perf_counter()
        with fork_global_rng(self.device):
            seed_global_rng(seed, self.device)
            self.reset(seed)
            try:
                if plan.prepare is not None:
                    self._undo = plan.prepare(self.model)
                    self.model.to(self.device)
                    if self.channels_last:  # new modules (e.g. LoRA adapters) in the same memory format
                        self.model.to(memory_format=torch.channels_last)
                return self._train(plan, train, val, seed=seed, data_key=data_key,
                                   keep_best_state=keep_best_state, progress=progress, t0=t0)
            finally:
                self.undo_plan()  # the module tree is the pristine one again, even after an error

    def undo_plan(self) -> None:
        """Undo the model changes of the plan trained last (LoRA adapters), if still in place."""
        undo, self._undo = self._undo, None
        if undo is not None:
            undo()

    def _train(self, plan: TrainingPlan, train: DeviceData, val: DeviceData, *, seed: int, data_key: Any,
               keep_best_state: bool, progress: Callable[[dict], None] | None, t0: float) -> TrainResult:
        cfg = self.cfg
        model = self.model
        apply_freezing(model, plan)
        groups = (plan.param_groups or default_param_groups)(model, plan.block_lrs)
        if not groups:
            raise ValueError(f"The plan '{plan.name}' trains no parameter.")
        optimizer = make_optimizer(groups, cfg)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.cosine_t_max)
        if plan.on_train_start is not None:
            plan.on_train_start(model, optimizer)

        prefix = plan.frozen_prefix(model, cfg.frozen_bn) if data_key is not None else 0
        augment = Augmenter(cfg.augment, seed) if cfg.augment != "none" else None
        # the frozen prefix is cached only where exact: never for augmented training batches (new
        # images at every step: the prefix runs on them, as in the naive loop); validation is not augmented
        val_key = (data_key, "val") if prefix and cfg.cache_frozen_prefix else None
        train_feats = self._prefix_features(train, (data_key, "train"), prefix) if prefix and augment is None else None
        if train_feats is None:
            prefix = 0  # cache disabled or augmented batches: full forward

        gen = torch.Generator(device="cpu").manual_seed(int(seed))
        stopping = EarlyStopping(cfg.patience, keep_best_state)
        history: list[dict] = []
        diverged = False
        n = len(train)
        bs = cfg.batch_size

        def batches() -> Iterator[tuple[Tensor, Tensor, int]]:
            order = torch.randperm(n, generator=gen).to(self.device)
            for start in range(0, n, bs):
                idx = order[start : start + bs]
                if augment is not None:
                    x, s = self.normalize(augment(train.images[idx])), 0
                else:
                    x, s = self._inputs(train, train_feats, idx, prefix)
                yield x, train.labels[idx], s

        epoch = 0
        for epoch in range(cfg.epochs):
            set_block_modes(model, plan, True, cfg.frozen_bn)
            if plan.on_epoch_start is not None:
                plan.on_epoch_start(model, optimizer, batches)
                set_block_modes(model, plan, True, cfg.frozen_bn)
            loss_sum, seen = 0.0, 0
            for x, y, s in batches():
                with self._autocast():
                    loss = plan_loss(model, plan, model.forward_from(s, x), y, cfg.aux_loss_weight)
                if not torch.isfinite(loss):
                    diverged = True
                    break
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                loss_sum += float(loss.detach()) * int(y.shape[0])
                seen += int(y.shape[0])
            if diverged:
                log.warning("Training of '%s' diverged (non-finite loss) at epoch %d", plan.name, epoch + 1)
                break
            scheduler.step()
            val_acc, _ = self.evaluate(val, plan=plan if val_key else None, data_key=val_key)
            record = {"epoch": epoch + 1, "train_loss": loss_sum / max(seen, 1), "val_macro_acc": val_acc}
            history.append(record)
            if progress is not None:
                progress(record)
            if stopping.update(epoch + 1, val_acc, model):
                break
        return TrainResult(
            best_val_acc=stopping.best_val_acc(diverged),
            best_epoch=stopping.best_epoch,
            epochs_run=len(history),
            history=history,
            diverged=diverged,
            best_state=stopping.best_state,
            seconds=time.perf_counter() - t0,
        )
