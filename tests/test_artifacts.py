"""Typed artifacts and the catalog datasets that store them as plain data."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import torch
from kedro.io.core import Version

from evotune.artifacts import Artifact, ArtifactError
from evotune.io import TypedJSONDataset, TypedTorchDataset


@dataclass
class Run(Artifact):
    seed: int
    acc: float


@dataclass
class Record(Artifact):
    name: str
    runs: list[Run]
    best: Run | None
    by_name: dict[str, Run]
    tags: list[str] = field(default_factory=list)


@dataclass
class Weights(Artifact):
    arch: str
    state_dict: dict[str, torch.Tensor]


def _record() -> Record:
    runs = [Run(1, 0.5), Run(2, 0.75)]
    return Record("x", runs, runs[1], {"a": runs[0]}, ["t"])


def test_round_trip_keeps_nested_artifacts():
    rec = _record()
    plain = rec.to_dict()
    assert plain["runs"] == [{"seed": 1, "acc": 0.5}, {"seed": 2, "acc": 0.75}]
    assert plain["best"] == {"seed": 2, "acc": 0.75} and plain["by_name"] == {"a": {"seed": 1, "acc": 0.5}}
    assert Record.from_dict(plain) == rec
    assert Record.from_dict({**plain, "best": None}).best is None


def test_missing_and_unknown_fields_name_the_file():
    plain = _record().to_dict()
    del plain["runs"]
    plain["old_key"] = 1
    with pytest.raises(ArtifactError, match=r"Record record in some/file.json .*missing runs; unknown old_key"):
        Record.from_dict(plain, source="some/file.json")
    # a field with a default may be absent
    plain = _record().to_dict()
    del plain["tags"]
    assert Record.from_dict(plain).tags == []


def test_typed_json_dataset_versioned(tmp_path):
    path = str(tmp_path / "record.json")
    ds = TypedJSONDataset(artifact=f"{__name__}.Record", filepath=path, version=Version(None, None))
    ds.save(_record())
    assert TypedJSONDataset(artifact=f"{__name__}.Record", filepath=path, version=Version(None, None)).load() == _record()
    with pytest.raises(Exception, match="was given a dict"):
        ds.save(_record().to_dict())


def test_typed_torch_dataset(tmp_path):
    w = Weights("tiny", {"w": torch.arange(4.0)})
    ds = TypedTorchDataset(artifact=f"{__name__}.Weights", filepath=str(tmp_path / "w.pt"))
    ds.save(w)
    back = ds.load()
    assert isinstance(back, Weights) and back.arch == "tiny" and torch.equal(back.state_dict["w"], w.state_dict["w"])


def test_artifact_must_be_a_class_path():
    with pytest.raises(Exception, match="not a subclass"):
        TypedJSONDataset(artifact="collections.OrderedDict", filepath="x.json")
