"""Weights and datasets download when the machine is online, through the code path users hit, from an HTTP
server on 127.0.0.1 that the test starts itself (nothing here reaches the internet).

Weights: a generated torchvision-format state dict named the way torchvision names its files
(``<name>-<first 8 hex digits of its SHA-256>.pth``), given as ``backbone.weights: <URL>``; the ImageNet
enum path downloads through the same function (``evotune.downloads.fetch_state_dict``, torch hub's own
download with its hash check). Dataset: MNIST in the layout torchvision's loader expects (gzipped IDX
files), its download pointed at the server through MNIST's public class attributes ``mirrors`` and
``resources``. Covered: a good download, a hash mismatch, a truncated file, a host that does not answer
(the offline message, found by the pre-run check), and the offline switch.
"""

from __future__ import annotations

import copy
import gzip
import hashlib
import http.server
import io
import socket
import struct
import threading

import numpy as np
import pytest
import torch
import torchvision

from evotune import downloads
from evotune.backbones import BackboneWeightsError, build_model, get_arch
from evotune.backbones.registry import _empty_torchvision
from evotune.data.sources import DataSourceError, make_source
from evotune.paper_setting import paper_setting_problems, weights_problems
from evotune.validation import ParameterError, validate_run


class Server:
    """Serves ``files`` (path -> bytes) on 127.0.0.1; a path in ``truncate`` announces its full length and
    sends half of it, then closes the connection (an interrupted download)."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.truncate: set[str] = set()
        self.requests: list[str] = []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _head(self) -> bytes | None:
                owner.requests.append(f"{self.command} {self.path}")
                body = owner.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return None
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Content-Type", "application/octet-stream")
                self.end_headers()
                return body

            def do_HEAD(self):  # noqa: N802 - http.server's name
                self._head()

            def do_GET(self):  # noqa: N802
                body = self._head()
                if body is not None:
                    self.wfile.write(body[: len(body) // 2] if self.path in owner.truncate else body)
                    self.close_connection = True

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def online(monkeypatch):
    """A machine switched online (conftest switches every test offline); the probe's memory cleared."""
    monkeypatch.delenv(downloads.OFFLINE_ENV, raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(downloads, "PROBE_TIMEOUT_S", 1.0)
    downloads._probe.cache_clear()
    yield
    downloads._probe.cache_clear()


@pytest.fixture
def server(online):
    s = Server()
    yield s
    s.close()


@pytest.fixture
def silent_host(online):
    """A host that accepts connections and never answers (the kernel completes the handshake)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    sock.close()


# --------------------------------------------------------------------------- weights


def weights_file(seed: int = 0) -> tuple[bytes, dict]:
    """A resnet10 state dict with its 1000-class head (as torchvision's ImageNet files), half precision."""
    torch.manual_seed(seed)
    state = {k: v.half() if v.is_floating_point() else v for k, v in _empty_torchvision("resnet10", 1000, None)
             .state_dict().items()}
    for v in state.values():
        if v.is_floating_point():
            v.normal_()
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue(), state


def named(data: bytes, stem: str = "resnet10") -> str:
    """torchvision's file name: the first 8 hex digits of the file's SHA-256 after the model name."""
    return f"{stem}-{hashlib.sha256(data).hexdigest()[:8]}.pth"


def pretrained_params(base_params: dict, weights: str, torch_home) -> dict:
    params = copy.deepcopy(base_params)
    params["backbone"].update(arch="resnet10", weights=weights, torch_home=str(torch_home))
    return params


def leftovers(torch_home) -> list[str]:
    folder = torch_home / "hub" / "checkpoints"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def test_weights_download_from_a_url_into_the_hub_cache(server, tmp_path, base_params, tiny_split):
    from evotune.pipelines.backbone.nodes import load_pretrained_backbone

    data, state = weights_file()
    name = named(data)
    server.files[f"/models/{name}"] = data
    url = f"{server.url}/models/{name}"
    params = pretrained_params(base_params, url, tmp_path)
    validate_run(params, ["load_pretrained_backbone"])  # the pre-run check: the host answers
    ckpt = load_pretrained_backbone(tiny_split(2, 3), params["backbone"], params["data"])  # the pipeline's node
    assert leftovers(tmp_path) == [name]  # in the torch hub cache, under its own name, no .partial file
    assert f"GET /models/{name}" in server.requests
    conv = state["conv1.weight"].float()
    assert torch.equal(ckpt.state_dict["stages.0.conv1.weight"], conv) and ckpt.num_classes == 3
    assert ckpt.source == f"torchvision resnet10 ({url})"
    server.close()  # cached: the next build reads the file and asks no one
    again = build_model("resnet10", 3, weights=url, torch_home=tmp_path)
    assert torch.equal(again.stages[0].conv1.weight.detach(), conv)
    assert weights_problems("resnet10", {"weights": url, "torch_home": str(tmp_path)}) == []


@pytest.mark.parametrize("fault", ["hash mismatch", "truncated"])
def test_a_corrupt_or_truncated_download_is_an_error_and_leaves_nothing(fault, server, tmp_path):
    data, state = weights_file()
    name = named(data)
    path = f"/models/{name}"
    if fault == "hash mismatch":
        server.files[path] = weights_file(seed=1)[0]  # other bytes under the name: the digits do not match
    else:
        server.files[path] = data
        server.truncate.add(path)
    url = server.url + path
    with pytest.raises(BackboneWeightsError) as err:
        build_model("resnet10", 3, weights=url, torch_home=tmp_path)
    msg = str(err.value)
    assert "corrupt or truncated" in msg and url in msg and "Nothing was kept" in msg
    assert str(tmp_path / "hub" / "checkpoints" / name) in msg
    assert leftovers(tmp_path) == []  # no file a later run would trust, no partial file
    server.files[path], server.truncate = data, set()  # the host serves the right file again: a rerun works
    model = build_model("resnet10", 3, weights=url, torch_home=tmp_path)
    assert torch.equal(model.stages[0].conv1.weight.detach(), state["conv1.weight"].float())


def test_a_host_that_does_not_answer_stops_the_run_before_anything_with_the_offline_message(
        silent_host, tmp_path, base_params, monkeypatch):
    name = "resnet10-0123abcd.pth"
    url = f"{silent_host}/models/{name}"
    dest = tmp_path / "hub" / "checkpoints" / name
    with pytest.raises(ParameterError) as err:  # the pre-run check of `kedro run --pipelines pretrained`
        validate_run(pretrained_params(base_params, url, tmp_path), ["load_pretrained_backbone"])
    msg = str(err.value)
    assert "nothing was run" in msg and "cannot download" in msg and "did not answer" in msg
    assert url in msg and str(dest) in msg
    with pytest.raises(BackboneWeightsError, match="cannot download"):
        build_model("resnet10", 3, weights=url, torch_home=tmp_path)
    assert leftovers(tmp_path) == []
    # the ImageNet weights go the same way (their host cannot be pointed here: they are switched offline)
    monkeypatch.setenv(downloads.OFFLINE_ENV, "1")
    enum_url = torchvision.models.get_weight("ResNet18_Weights.IMAGENET1K_V1").url
    problem = weights_problems("resnet18", {"weights": "IMAGENET1K_V1", "torch_home": str(tmp_path)})
    assert len(problem) == 1 and "switched offline" in problem[0] and enum_url in problem[0]
    assert str(tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth") in problem[0]


def test_torchvision_weight_names(tmp_path, monkeypatch):
    """`backbone.weights` takes the enum's names; the file of each is named by its URL; a wrong name says the valid ones."""
    from evotune.backbones import imagenet_weights_path

    for weights, file in (("imagenet", "resnet50-11ad3fa6.pth"), ("IMAGENET1K_V2", "resnet50-11ad3fa6.pth"),
                          ("DEFAULT", "resnet50-11ad3fa6.pth"), ("IMAGENET1K_V1", "resnet50-0676ba61.pth")):
        assert imagenet_weights_path("resnet50", tmp_path, weights if weights != "imagenet" else None).name == file
        problem = weights_problems("resnet50", {"weights": weights, "torch_home": str(tmp_path)})[0]
        assert file in problem and "https://download.pytorch.org/models/" + file in problem
    bad = weights_problems("resnet50", {"weights": "IMAGENET1K_V9", "torch_home": str(tmp_path)})[0]
    assert "IMAGENET1K_V1, IMAGENET1K_V2, DEFAULT" in bad and "imagenet" in bad
    assert "file name must end" in weights_problems("resnet50", {"weights": "https://h/w.pth"})[0]
    assert get_arch("resnet10").imagenet_weights is None  # the URL form needs no ImageNet weights of the arch


# --------------------------------------------------------------------------- a dataset: MNIST


def idx_files(n_train: int = 20, n_test: int = 10) -> dict[str, bytes]:
    """MNIST's four gzipped IDX files (torchvision's layout), small."""
    rng = np.random.default_rng(0)
    out = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = np.arange(n, dtype=np.uint8) % 10
        images = rng.integers(0, 255, (n, 28, 28), dtype=np.uint8)
        out[f"{prefix}-images-idx3-ubyte.gz"] = gzip.compress(struct.pack(">IIII", 2051, n, 28, 28) + images.tobytes())
        out[f"{prefix}-labels-idx1-ubyte.gz"] = gzip.compress(struct.pack(">II", 2049, n) + labels.tobytes())
    return out


@pytest.fixture
def mnist_server(server, monkeypatch):
    """MNIST's download pointed at the server through its public class attributes."""
    files = idx_files()
    for name, data in files.items():
        server.files[f"/mnist/{name}"] = data
    monkeypatch.setattr(torchvision.datasets.MNIST, "mirrors", [f"{server.url}/mnist/"])
    monkeypatch.setattr(torchvision.datasets.MNIST, "resources",
                        [(name, hashlib.md5(data).hexdigest()) for name, data in files.items()])
    return server


def paper_mnist(load_params, root, download: bool = True) -> dict:
    params = load_params({"paper": {"dataset": "mnist", "arch": "resnet50"}})
    params["data"]["source"] = {**params["data"]["source"], "root": str(root), "download": download}
    params["backbone"]["weights"] = "none"  # the data alone (the weights' host is not this test's)
    return params


def test_a_dataset_downloads_when_download_is_true(mnist_server, tmp_path, load_params):
    root = tmp_path / "torchvision"
    assert not [p for p in paper_setting_problems(paper_mnist(load_params, root)) if "data of" in p]  # downloadable: accepted
    src = make_source({"kind": "torchvision", "name": "MNIST", "root": str(root), "download": True})
    index = src.index()
    assert (index["official_split"] == "train").sum() == 20 and (index["official_split"] == "test").sum() == 10
    assert sorted(index["label"].unique()) == list(range(10))
    assert (root / "MNIST" / "raw" / "t10k-images-idx3-ubyte").is_file()
    assert next(iter(src.load_images(["test:3"]))).size == (28, 28)
    assert paper_setting_problems(paper_mnist(load_params, root, download=False)) == []  # now there: nothing to download


@pytest.mark.parametrize("fault", ["hash mismatch", "truncated"])
def test_a_corrupt_dataset_download_is_an_error_and_is_not_trusted_later(fault, mnist_server, tmp_path):
    root = tmp_path / "torchvision"
    path = "/mnist/t10k-images-idx3-ubyte.gz"
    good = mnist_server.files[path]
    if fault == "truncated":
        mnist_server.truncate.add(path)
    else:
        mnist_server.files[path] = gzip.compress(b"not mnist")
    with pytest.raises(DataSourceError) as err:
        make_source({"kind": "torchvision", "name": "MNIST", "root": str(root), "download": True})
    msg = str(err.value)
    assert "corrupt or truncated" in msg and "MNIST" in msg and str(root) in msg
    assert not (root / "MNIST" / "raw" / "t10k-images-idx3-ubyte").exists()  # never extracted
    mnist_server.files[path], mnist_server.truncate = good, set()
    src = make_source({"kind": "torchvision", "name": "MNIST", "root": str(root), "download": True})
    assert len(src.index()) == 30  # the bad file was fetched again, not trusted


def test_an_unreachable_dataset_host_gives_the_offline_message_before_anything(silent_host, tmp_path, monkeypatch,
                                                                             load_params):
    monkeypatch.setattr(torchvision.datasets.MNIST, "mirrors", [f"{silent_host}/mnist/"])
    root = tmp_path / "torchvision"
    problems = [p for p in paper_setting_problems(paper_mnist(load_params, root)) if "data of mnist" in p]
    assert len(problems) == 1, problems
    assert "cannot download" in problems[0] and f"{silent_host}/mnist/train-images-idx3-ubyte.gz" in problems[0]
    assert str(root / "MNIST" / "raw" / "train-images-idx3-ubyte") in problems[0]
    assert not root.exists()  # the check created nothing


def test_timm_weights_respect_hf_hub_offline(online, monkeypatch, tmp_path):
    """timm weights come through the Hugging Face hub: its own switch, HF_HUB_OFFLINE, stops their download."""
    pytest.importorskip("timm")
    from huggingface_hub import hf_hub_url

    from evotune.backbones.timm_models import build_timm, timm_weights_problem

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    problem = timm_weights_problem("timm/resnet10t", tmp_path)
    assert "switched offline" in problem and hf_hub_url("timm/resnet10t.c3_in1k", "model.safetensors") in problem
    assert str(tmp_path / "models--timm--resnet10t.c3_in1k") in problem
    with pytest.raises(BackboneWeightsError, match="cannot download"):
        build_timm("timm/resnet10t", 3, weights="imagenet", hf_cache=tmp_path)


def test_the_offline_switch_keeps_torchvision_off_the_network(mnist_server, tmp_path, monkeypatch):
    """EVOTUNE_OFFLINE=1 with download: true: the data stage asks no one and names the file to fetch."""
    monkeypatch.setenv(downloads.OFFLINE_ENV, "1")
    root = tmp_path / "torchvision"
    with pytest.raises(DataSourceError) as err:
        make_source({"kind": "torchvision", "name": "MNIST", "root": str(root), "download": True})
    msg = str(err.value)
    assert "switched offline" in msg and f"{mnist_server.url}/mnist/train-images-idx3-ubyte.gz" in msg
    assert str(root / "MNIST" / "raw") in msg and mnist_server.requests == []
