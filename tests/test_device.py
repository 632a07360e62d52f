"""`device: auto` (training.device, predict.device): CUDA, then Apple's MPS, then the CPU; an explicit device that is
not there is one message naming the parameter. The availability of each is monkeypatched: the test runs the same on
a CPU machine, a CUDA machine and a Mac."""

from __future__ import annotations

import pytest
import torch

from evotune.errors import ParameterError
from evotune.training import AUTO_DEVICES, resolve_device


@pytest.fixture
def available(monkeypatch):
    """``available(cuda=..., mps=...)``: what torch reports as available in this test."""

    def set_available(*, cuda: bool, mps: bool) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)

    return set_available


@pytest.mark.parametrize("cuda, mps, expected", [
    (True, True, "cuda"),
    (True, False, "cuda"),
    (False, True, "mps"),
    (False, False, "cpu"),
])
@pytest.mark.parametrize("name", ["auto", None, ""])
def test_auto_picks_cuda_then_mps_then_cpu(available, cuda, mps, expected, name):
    available(cuda=cuda, mps=mps)
    assert resolve_device(name) == torch.device(expected)
    assert AUTO_DEVICES == ("cuda", "mps", "cpu")


@pytest.mark.parametrize("name, cuda, mps", [("cuda", False, True), ("cuda:1", False, True), ("mps", True, False)])
def test_an_explicit_device_that_is_not_there_names_the_parameter(available, name, cuda, mps):
    available(cuda=cuda, mps=mps)
    what = "MPS" if name == "mps" else "CUDA"
    with pytest.raises(ParameterError, match=rf"predict.device is '{name}' but {what}.* is not available here; "
                                             r"set predict.device to 'auto' or 'cpu'"):
        resolve_device(name, param="predict.device")


@pytest.mark.parametrize("name, cuda, mps", [("cpu", False, False), ("cpu", True, True), ("mps", False, True),
                                             ("cuda", True, False), ("cuda:0", True, True)])
def test_an_explicit_device_that_is_there_is_taken_as_given(available, name, cuda, mps):
    available(cuda=cuda, mps=mps)
    assert resolve_device(name) == torch.device(name)


def test_a_name_that_is_no_device_says_which_are(available):
    available(cuda=False, mps=False)
    with pytest.raises(ParameterError, match=r"training.device is 'gpu', not a torch device; use 'auto', 'cpu', "
                                             r"'cuda\[:i\]' or 'mps'"):
        resolve_device("gpu")
