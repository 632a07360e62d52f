"""The project's Kedro datasets: versioned round trips, and clear errors for wrong data or files."""

from __future__ import annotations

import pytest
import torch
from kedro.io.core import DatasetError, Version

from evotune.io import NewestVersionLinksDataset, SafetensorsDataset, TorchDataset, TorchExportDataset


def test_torch_and_safetensors_round_trip_versioned(tmp_path):
    ckpt = {"state_dict": {"w": torch.arange(6.0).view(2, 3)}, "arch": "resnet10", "n": 3}
    ds = TorchDataset(filepath=str(tmp_path / "ckpt.pt"), version=Version(None, "v1"))
    ds.save(ckpt)
    assert (tmp_path / "ckpt.pt" / "v1" / "ckpt.pt").is_file()
    back = TorchDataset(filepath=str(tmp_path / "ckpt.pt"), version=Version(None, None)).load()
    assert torch.equal(back["state_dict"]["w"], ckpt["state_dict"]["w"]) and back["n"] == 3

    state = {"fc.weight": torch.randn(3, 4).t(), "bn.num_batches_tracked": torch.tensor(7)}  # non-contiguous too
    st = SafetensorsDataset(filepath=str(tmp_path / "w.safetensors"), version=Version(None, "v1"))
    st.save(state)
    loaded = SafetensorsDataset(filepath=str(tmp_path / "w.safetensors"), version=Version("v1", None)).load()
    assert set(loaded) == set(state) and all(torch.equal(loaded[k], state[k]) for k in state)
    from safetensors import safe_open

    with safe_open(str(tmp_path / "w.safetensors" / "v1" / "w.safetensors"), "pt") as f:
        assert f.metadata() == {"format": "pt"}
    with pytest.raises(DatasetError, match="dict of tensors"):
        SafetensorsDataset(filepath=str(tmp_path / "w.safetensors"), version=Version(None, "v2")).save({"a": 1})


def test_torch_export_round_trip_and_corrupt_file(tmp_path):
    module = torch.nn.Sequential(torch.nn.Linear(4, 2), torch.nn.ReLU()).eval()
    x = torch.randn(3, 4)
    program = torch.export.export(module, (x,))
    ds = TorchExportDataset(filepath=str(tmp_path / "m.pt2"))
    ds.save(program)
    assert torch.equal(ds.load().module()(x), module(x))
    with pytest.raises(DatasetError, match="ExportedProgram"):
        ds.save(module)
    (tmp_path / "m.pt2").write_bytes(b"not an archive")
    with pytest.raises(DatasetError, match="Could not read the torch.export archive"):
        ds.load()


def test_newest_version_links_point_at_the_newest_saved_version(tmp_path):
    """What the report links of the comparison: per file, the newest version Kedro saved, relative to the
    report's folder; None for a file with no version (a version folder without the file does not count)."""
    from kedro_datasets.text import TextDataset

    table = tmp_path / "data/08_reporting/compare/comparison.md"
    for v in ("2026-01-01T00.00.00.000Z", "2026-02-01T00.00.00.000Z"):
        TextDataset(filepath=str(table), version=Version(None, v)).save(f"table {v}")
    (table / "2026-03-01T00.00.00.000Z").mkdir()  # a run that stopped before saving
    ds = NewestVersionLinksDataset(
        filepaths={"table": str(table), "figure": str(tmp_path / "data/08_reporting/compare/figure.png")},
        relative_to=str(tmp_path / "data/08_reporting/latest"))
    links = ds.load()
    assert links == {"table": {"link": "../compare/comparison.md/2026-02-01T00.00.00.000Z/comparison.md",
                               "version": "2026-02-01T00.00.00.000Z"}, "figure": None}
    (tmp_path / "data/08_reporting/latest").mkdir()  # where the report is written
    assert (tmp_path / "data/08_reporting/latest" / links["table"]["link"]).read_text() == \
        "table 2026-02-01T00.00.00.000Z"
    assert ds.exists()
    with pytest.raises(DatasetError, match="not saved"):
        ds.save({})
