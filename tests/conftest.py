import os

import pytest
import torch

os.environ.setdefault("KEDRO_DISABLE_TELEMETRY", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(autouse=True)
def _deterministic_torch():
    torch.manual_seed(0)
    yield


def make_split(n_per_class: int, num_classes: int, size: int = 32, n_chunks: int = 1, seed: int = 0) -> dict:
    """A small learnable split in the project's format: class k is a bright square at a class-specific place."""
    g = torch.Generator().manual_seed(seed)
    n = n_per_class * num_classes
    labels = torch.arange(num_classes).repeat_interleave(n_per_class)
    images = (torch.rand(n, 3, size, size, generator=g) * 60).to(torch.uint8)
    cell = size // num_classes
    for i, y in enumerate(labels.tolist()):
        images[i, :, y * cell : (y + 1) * cell, :] += 150
    chunks = torch.arange(n) % n_chunks
    return {
        "images": images,
        "labels": labels.long(),
        "chunks": chunks.long(),
        "classes": [f"c{k}" for k in range(num_classes)],
        "items": [str(i) for i in range(n)],
    }


@pytest.fixture
def tiny_split():
    return make_split


@pytest.fixture(scope="session")
def resnet10_export(tmp_path_factory):
    """A tiny resnet10 retrained (2 seeds, 2 epochs) and exported by the project's nodes (tests/exported.py)."""
    from exported import make_export

    return make_export(tmp_path_factory.mktemp("export_resnet10"), arch="resnet10")
