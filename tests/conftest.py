"""The shared fixtures of the tests. Test modules request these fixtures; nothing is imported from here."""

import copy
import functools
import os
import shutil
from pathlib import Path

import pytest
import torch

os.environ.setdefault("KEDRO_DISABLE_TELEMETRY", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ["EVOTUNE_OFFLINE"] = "1"  # tests never download (tests/test_downloads.py serves its files itself)


ROOT = Path(__file__).resolve().parents[1]

#: torch's global state as the session found it: no test module may change it at import (collection), and every
#: test gets it back (a thread count left at 1 would make later results depend on which files were collected)
TORCH_STATE = {"num_threads": torch.get_num_threads(), "dtype": torch.get_default_dtype(),
               "grad": torch.is_grad_enabled()}

#: the user's caches and settings the suite must not read: weights caches (torch hub, Hugging Face) and the
#: variables that relocate them. The session sets its own, empty ones (subprocesses inherit them).
CACHE_VARIABLES = ("TORCH_HOME", "HF_HOME")
RELOCATING = ("XDG_CACHE_HOME", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "TRANSFORMERS_CACHE", "TIMM_CACHE_DIR")

#: what the data stage records in every split (see evotune.lineage): the tiny splits of a test belong together
TINY_LINEAGE = {"dataset": "tiny", "dataset_name": "make_split"}


@functools.cache
def _read_base_parameters() -> dict:
    from evotune.config import ProjectConfigLoader

    return ProjectConfigLoader(str(ROOT / "conf"), base_env="base", default_run_env="base")["parameters"]


def _base_parameters() -> dict:
    """The parameters of conf/base, the project's only source of defaults (read once, a fresh copy per call)."""
    return copy.deepcopy(_read_base_parameters())


def _train_config(**overrides):
    """A TrainConfig from conf/base's `training`, with ``overrides``."""
    from evotune.training import TrainConfig

    return TrainConfig.from_params({**_base_parameters()["training"], **overrides})


def _search_config(**overrides):
    """A SearchConfig from conf/base's `search`, with ``overrides``."""
    from evotune.search.config import SearchConfig

    return SearchConfig.from_params({**_base_parameters()["search"], **overrides})


def _method_params(name: str, **overrides) -> dict:
    """conf/base's `compare.<name>` parameters with ``overrides``."""
    return {**_base_parameters()["compare"][name], **overrides}


def _make_split(n_per_class: int, num_classes: int, size: int = 32, seed: int = 0):
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


def _backbone_checkpoint(model, num_classes: int, **meta):
    """A BackboneCheckpoint as the backbone stage writes it (checkpoint + lineage), for the tiny splits."""
    import dataclasses

    from evotune.backbones import make_checkpoint
    from evotune.lineage import tensor_fingerprint

    meta = {"input_size": 32, "resize_size": 32, "mean": [0.3] * 3, "std": [0.25] * 3, "source": "test", **meta}
    ckpt = make_checkpoint(model, num_classes=num_classes, **meta)
    return dataclasses.replace(ckpt, dataset=TINY_LINEAGE["dataset"], backbone_id=tensor_fingerprint(ckpt.state_dict)[:12],
                               created="2026-01-01T00:00:00Z")


def _torch_state() -> dict:
    return {"num_threads": torch.get_num_threads(), "dtype": torch.get_default_dtype(), "grad": torch.is_grad_enabled()}


def pytest_collection_finish(session):
    """A test module that changes torch's global state at import (e.g. ``torch.set_num_threads(1)``) fails the
    run: it would change every later test of the session. Use the ``one_thread`` fixture instead."""
    changed = {k: (v, TORCH_STATE[k]) for k, v in _torch_state().items() if v != TORCH_STATE[k]}
    if changed:
        raise pytest.UsageError(f"a test module changed torch's global state at import (now, before): {changed}; "
                                "use a fixture that restores it (conftest's one_thread)")


@pytest.fixture(autouse=True)
def _restore_torch_state():
    """Every test leaves torch's thread count, default dtype and grad mode as it found them."""
    before = _torch_state()
    yield
    torch.set_num_threads(before["num_threads"])
    torch.set_default_dtype(before["dtype"])
    torch.set_grad_enabled(before["grad"])


@pytest.fixture(scope="session", autouse=True)
def isolated_caches(tmp_path_factory):
    """Empty torch hub and Hugging Face caches for the whole session, whatever the user's environment holds
    (weights a user downloaded must not change what a test sees). Returns {variable: path}."""
    home = tmp_path_factory.mktemp("caches")
    paths = {name: home / name.lower() for name in CACHE_VARIABLES}
    with pytest.MonkeyPatch.context() as mp:
        for name in RELOCATING:
            mp.delenv(name, raising=False)
        for name, path in paths.items():
            path.mkdir()
            mp.setenv(name, str(path))
        yield paths


def copy_project(dst: Path) -> Path:
    """A copy of the project at ``dst`` as a fresh clone has it: pyproject.toml, .telemetry, conf/ with an empty
    conf/local (a user's own conf/local is not read), empty data layers. The package is the installed one."""
    dst.mkdir(parents=True, exist_ok=True)
    for name in ("pyproject.toml", ".telemetry"):
        shutil.copy2(ROOT / name, dst / name)
    shutil.copytree(ROOT / "conf", dst / "conf", ignore=shutil.ignore_patterns("local"))
    (dst / "conf" / "local").mkdir()
    (dst / "src").mkdir()
    for layer in sorted((ROOT / "data").iterdir()) if (ROOT / "data").is_dir() else ():
        if layer.is_dir():
            (dst / "data" / layer.name).mkdir(parents=True)
    return dst


@pytest.fixture(scope="session")
def project_copy(tmp_path_factory) -> Path:
    """A copy of the project (:func:`copy_project`): tests that read conf/ or data/ the way Kedro does read it
    here, never the checkout's conf/local or data/."""
    return copy_project(tmp_path_factory.mktemp("project") / "evotune")


@pytest.fixture(scope="session")
def conf_dir(project_copy) -> Path:
    """conf/ of :func:`project_copy`: conf/base and the other environments, conf/local empty."""
    return project_copy / "conf"


@pytest.fixture(scope="session")
def load_params(conf_dir):
    """``load_params(runtime_params=None, env="paper")``: the merged parameters of the project copy's conf/
    (:func:`conf_dir`: a user's own conf/local is not read), as a Kedro session loads them."""
    from evotune import settings

    def load(runtime_params: dict | None = None, env: str = "paper") -> dict:
        loader = settings.CONFIG_LOADER_CLASS(str(conf_dir), env=env, runtime_params=runtime_params or {},
                                              **settings.CONFIG_LOADER_ARGS)
        return loader["parameters"]

    return load


@pytest.fixture(scope="module")
def make_trainer(train_config):
    """``make_trainer(epochs=3, **kw)``: a Trainer of a fresh resnet10 (seed 0, 4 classes, CPU) on conf/base's
    training with ``kw``."""
    from evotune.backbones import build_model
    from evotune.training import Trainer

    def make(epochs=3, **kw):
        torch.manual_seed(0)
        model = build_model("resnet10", 4)
        cfg = train_config(epochs=epochs, patience=5, batch_size=16, eval_batch_size=32, device="cpu", **kw)
        return Trainer(model, cfg, mean=(0.3, 0.3, 0.3), std=(0.25, 0.25, 0.25))

    return make


@pytest.fixture(scope="module")
def data(make_split):
    """``data(trainer, seed=0)``: tiny train and val data (4 classes) on the trainer's device."""
    from evotune.training import DeviceData

    def make(trainer, seed=0):
        return (DeviceData.from_split(make_split(8, 4, seed=seed), trainer.device),
                DeviceData.from_split(make_split(4, 4, seed=seed + 1), trainer.device))

    return make


@pytest.fixture(scope="session")
def root() -> Path:
    """The project root (README.md, conf/, data/)."""
    return ROOT


@pytest.fixture(scope="session")
def base_parameters():
    """``base_parameters()``: conf/base's parameters, a fresh copy per call."""
    return _base_parameters


@pytest.fixture
def base_params(base_parameters) -> dict:
    """conf/base's parameters (this test's own copy)."""
    return base_parameters()


@pytest.fixture(scope="session")
def train_config():
    """``train_config(**overrides)``: a TrainConfig from conf/base's `training`."""
    return _train_config


@pytest.fixture(scope="session")
def search_config():
    """``search_config(**overrides)``: a SearchConfig from conf/base's `search`."""
    return _search_config


@pytest.fixture(scope="session")
def method_params():
    """``method_params(name, **overrides)``: conf/base's `compare.<name>` parameters."""
    return _method_params


@pytest.fixture(scope="session")
def make_split():
    """``make_split(n_per_class, num_classes, size=32, seed=0)``: a small learnable Split."""
    return _make_split


@pytest.fixture(scope="session")
def backbone_checkpoint():
    """``backbone_checkpoint(model, num_classes, **meta)``: a BackboneCheckpoint for the tiny splits."""
    return _backbone_checkpoint


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op torch thread for a module of tiny tensors: as fast, and it stays fast on a busy
    shared CPU (several OpenMP threads on oversubscribed cores made such files 20x slower).
    A module opts in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _deterministic_torch():
    torch.manual_seed(0)
    yield


@pytest.fixture
def tiny_split():
    return _make_split


@pytest.fixture(scope="session")
def make_export():
    """``make_export(folder, arch=..., num_classes=..., size=..., train=...)`` of tests/exported.py, given
    conf/base's parameters and the tiny splits and backbone checkpoints of these fixtures."""
    from exported import make_export

    return functools.partial(make_export, base_parameters=_base_parameters(), make_split=_make_split,
                             backbone_checkpoint=_backbone_checkpoint)


@pytest.fixture(scope="session")
def resnet10_export(tmp_path_factory, make_export):
    """A tiny resnet10 retrained (2 seeds, 2 epochs) and exported by the project's nodes (tests/exported.py)."""
    return make_export(tmp_path_factory.mktemp("export_resnet10"), arch="resnet10")


@pytest.fixture(scope="session")
def timm_export(tmp_path_factory, make_export):
    """A tiny timm model (timm/resnet10t from random init, retrained 2 seeds x 2 epochs) exported by the
    project's nodes; skipped where the optional timm is not installed."""
    pytest.importorskip("timm", reason="timm is not installed (pip install -e '.[timm]')")
    return make_export(tmp_path_factory.mktemp("export_timm"), arch="timm/resnet10t")
