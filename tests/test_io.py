"""The project's Kedro datasets: versioned round trips, and clear errors for wrong data or files."""

from __future__ import annotations

import pytest
import torch
from kedro.io.core import DatasetError, Version

from evotune.io import SafetensorsDataset, TorchDataset, TorchExportDataset


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
