import copy
import functools
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("KEDRO_DISABLE_TELEMETRY", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("MPLBACKEND", "Agg")


ROOT = Path(__file__).resolve().parents[1]


@functools.cache
def _base_parameters() -> dict:
    from evotune.config import ProjectConfigLoader

    return ProjectConfigLoader(str(ROOT / "conf"), base_env="base", default_run_env="base")["parameters"]


def base_parameters() -> dict:
    """The parameters of conf/base, the project's only source of defaults (a fresh copy)."""
    return copy.deepcopy(_base_parameters())


def train_config(**overrides):
    """A TrainConfig from conf/base's `training`, with ``overrides``."""
    from evotune.training import TrainConfig

    return TrainConfig.from_params({**base_parameters()["training"], **overrides})


def search_config(**overrides):
    """A SearchConfig from conf/base's `search`, with ``overrides``."""
    from evotune.search.config import SearchConfig

    return SearchConfig.from_params({**base_parameters()["search"], **overrides})


def method_params(name: str, **overrides) -> dict:
    """conf/base's `compare.<name>` parameters with ``overrides``."""
    return {**base_parameters()["compare"][name], **overrides}


@pytest.fixture
def base_params() -> dict:
    return base_parameters()


@pytest.fixture(autouse=True)
def _deterministic_torch():
    torch.manual_seed(0)
    yield


def make_split(n_per_class: int, num_classes: int, size: int = 32, seed: int = 0):
    """A small learnable :class:`~evotune.data.split.Split`: class k is a bright square at a class-specific place."""
    from evotune.data.split import Split

    g = torch.Generator().manual_seed(seed)
    n = n_per_class * num_classes
    labels = torch.arange(num_classes).repeat_interleave(n_per_class)
    images = (torch.rand(n, 3, size, size, generator=g) * 60).to(torch.uint8)
    cell = size // num_classes
    for i, y in enumerate(labels.tolist()):
        images[i, :, y * cell : (y + 1) * cell, :] += 150
    return Split(
        images=images,
        labels=labels.long(),
        classes=[f"c{k}" for k in range(num_classes)],
        items=[str(i) for i in range(n)],
        **TINY_LINEAGE,
    )


#: what the data stage records in every split (see evotune.lineage): the tiny splits of a test belong together
TINY_LINEAGE = {"dataset": "tiny", "dataset_name": "make_split"}


def backbone_checkpoint(model, num_classes: int, **meta):
    """A BackboneCheckpoint as the backbone stage writes it (checkpoint + lineage), for the tiny splits."""
    import dataclasses

    from evotune.backbones import make_checkpoint
    from evotune.lineage import tensor_fingerprint

    meta = {"input_size": 32, "resize_size": 32, "mean": [0.3] * 3, "std": [0.25] * 3, "source": "test", **meta}
    ckpt = make_checkpoint(model, num_classes=num_classes, **meta)
    return dataclasses.replace(ckpt, dataset=TINY_LINEAGE["dataset"], backbone_id=tensor_fingerprint(ckpt.state_dict)[:12],
                               created="2026-01-01T00:00:00Z")


@pytest.fixture
def tiny_split():
    return make_split


@pytest.fixture(scope="session")
def resnet10_export(tmp_path_factory):
    """A tiny resnet10 retrained (2 seeds, 2 epochs) and exported by the project's nodes (tests/exported.py)."""
    from exported import make_export

    return make_export(tmp_path_factory.mktemp("export_resnet10"), arch="resnet10")
