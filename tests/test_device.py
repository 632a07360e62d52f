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


def test_on_mps_its_generator_is_seeded_from_the_seed_and_restored_after(monkeypatch):
    """Dropout on MPS tensors draws from the MPS generator: a training's seed seeds it, and the fork puts it back.
    (torch.mps's generator functions are stand-ins here: the test runs without an MPS device.)"""
    from evotune.training import fork_global_rng, global_rng_seed, seed_global_rng

    calls, state = [], {"v": b"before"}
    monkeypatch.setattr(torch.mps, "manual_seed", lambda value: (calls.append(value), state.update(v=value)))
    monkeypatch.setattr(torch.mps, "get_rng_state", lambda: state["v"])
    monkeypatch.setattr(torch.mps, "set_rng_state", lambda value: state.update(v=value))
    cpu_before = torch.get_rng_state()
    with fork_global_rng(torch.device("mps")):
        seed_global_rng(7, torch.device("mps"))
        assert calls == [global_rng_seed(7)] and state["v"] == global_rng_seed(7)
        torch.rand(3)
    assert state["v"] == b"before" and torch.equal(torch.get_rng_state(), cpu_before)
    seed_global_rng(7, torch.device("cpu"))  # on the CPU the MPS generator is left alone
    assert calls == [global_rng_seed(7)]
