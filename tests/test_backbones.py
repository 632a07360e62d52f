"""Tests for evotune.backbones: block partitions, staged forward, heads, weights, checkpoints.

Everything runs on CPU with tiny inputs; no network access is needed.
"""

from __future__ import annotations

import copy
import dataclasses
import re

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.resnet import BasicBlock, ResNet
from torchvision.models.vision_transformer import VisionTransformer

from evotune import backbones as B
from evotune.backbones.staged import _head_linear

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors (conftest): restored after the module

ALL_ARCHS = list(B.ARCHITECTURES)
#: the architectures whose forward the tests run: ViT-B/16 takes 224 x 224 inputs only (35 GFLOP for
#: two images); vit_tiny32 is cut by the same stager, and ViT-B/16's partition is checked on the meta device
FORWARD_ARCHS = [a for a in ALL_ARCHS if a != "vit_b_16"]

# SPEC section 5: the paper's four architectures.
SPEC_BLOCKS = {
    "resnet50": ("stem", "layer1", "layer2", "layer3", "layer4", "fc"),
    "densenet121": (
        "stem",
        "denseblock1",
        "transition1",
        "denseblock2",
        "transition2",
        "denseblock3",
        "transition3",
        "denseblock4",
        "classifier",
    ),
    "vgg19": ("conv1", "conv2", "conv3", "conv4", "conv5", "classifier"),
    "inception_v3": (
        "stem",
        "Mixed_5b",
        "Mixed_5c",
        "Mixed_5d",
        "Mixed_6a",
        "Mixed_6b",
        "Mixed_6c",
        "Mixed_6d",
        "Mixed_6e",
        "AuxLogits",
        "Mixed_7a",
        "Mixed_7b",
        "Mixed_7c",
        "fc",
    ),
}

# Smallest convenient eval-mode input per architecture.
INPUT_SIZE = {"resnet10": 32, "vgg19": 32, "vgg19_bn": 32, "inception_v3": 75, "vit_tiny32": 32}

NUM_CLASSES = 7


def _torchvision_model(arch: str, num_classes: int = NUM_CLASSES) -> nn.Module:
    """The plain torchvision model, built independently of evotune.backbones."""
    if arch == "resnet10":
        return ResNet(BasicBlock, [1, 1, 1, 1], num_classes=num_classes)
    if arch == "vit_tiny32":
        return VisionTransformer(image_size=32, patch_size=4, num_layers=4, num_heads=4, hidden_dim=64, mlp_dim=128,
                                 num_classes=num_classes)
    kwargs = {}
    if arch == "inception_v3":
        kwargs = dict(aux_logits=True, transform_input=True, init_weights=False)
    return torchvision.models.get_model(arch, weights=None, num_classes=num_classes, **kwargs)


def _randomise_buffers(model: nn.Module, seed: int = 0) -> None:
    """Give BatchNorm running statistics non-trivial values so they matter in eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)


def _input(arch: str, batch: int = 2, seed: int = 1) -> torch.Tensor:
    s = INPUT_SIZE.get(arch, 64)
    return torch.randn(batch, 3, s, s, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module", params=FORWARD_ARCHS)
def wrapped(request):
    """(arch, torchvision model, StagedModel wrapping the same modules), eval mode."""
    arch = request.param
    torch.manual_seed(0)
    tv = _torchvision_model(arch)
    _randomise_buffers(tv)
    tv.eval()
    staged = B.staged_from_torchvision(arch, tv)
    assert not staged.training
    return arch, tv, staged


# --------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------
def test_registry_matches_spec_and_torchvision_transforms():
    for arch, blocks in SPEC_BLOCKS.items():
        assert B.get_arch(arch).block_names == blocks
    assert [len(B.get_arch(a).block_names) for a in SPEC_BLOCKS] == [6, 9, 6, 14]
    r50, inc = B.get_arch("resnet50"), B.get_arch("inception_v3")
    assert (r50.input_size, r50.resize_size, r50.imagenet_weights) == (
        224,
        232,
        "ResNet50_Weights.IMAGENET1K_V2",
    )
    assert (inc.input_size, inc.resize_size) == (299, 342)
    r10 = B.get_arch("resnet10")
    assert (r10.input_size, r10.resize_size, r10.imagenet_weights) == (32, 32, None)
    for spec in B.ARCHITECTURES.values():
        assert spec.block_names[-1] in ("fc", "classifier", "head")
        if spec.imagenet_weights is None:
            continue
        t = torchvision.models.get_weight(spec.imagenet_weights).transforms()
        assert t.crop_size == [spec.input_size], spec.name
        assert t.resize_size == [spec.resize_size], spec.name
        assert tuple(t.mean) == spec.mean and tuple(t.std) == spec.std
        assert t.interpolation.value == spec.interpolation


def test_get_arch_aliases_and_unknown_name():
    assert B.get_arch("ResNet-50").name == "resnet50"
    assert B.get_arch("Inception-v3").name == "inception_v3"
    with pytest.raises(B.UnknownArchitectureError) as info:
        B.get_arch("resnet999")
    assert isinstance(info.value, ValueError)
    msg = str(info.value)
    assert "resnet999" in msg and "backbone.arch" in msg and "parameters_backbone.yml" in msg
    for name in B.ARCHITECTURES:
        assert name in msg
    with pytest.raises(B.UnknownArchitectureError):
        B.build_model("alexnet", 3)


# --------------------------------------------------------------------------------------
# Staging, per architecture
# --------------------------------------------------------------------------------------
def test_every_parameter_in_exactly_one_block(wrapped):
    arch, tv, staged = wrapped
    spec = B.get_arch(arch)
    assert staged.arch == arch
    assert tuple(staged.block_names) == spec.block_names
    assert staged.num_blocks == len(staged.stages) == spec.num_blocks
    owner: dict[int, int] = {}
    for i, stage in enumerate(staged.stages):
        for p in stage.parameters():
            assert id(p) not in owner, f"{arch}: parameter in blocks {owner.get(id(p))} and {i}"
            owner[id(p)] = i
    tv_params = {id(p) for p in tv.parameters()}
    assert set(owner) == tv_params  # same objects: none missing, none added
    assert {id(p) for p in staged.parameters()} == tv_params
    # Buffers (BN statistics) are shared too.
    assert {id(b) for b in staged.buffers()} == {id(b) for b in tv.buffers()}
    assert B.count_parameters(staged) == sum(
        B.count_parameters(staged, [i]) for i in range(staged.num_blocks)
    ) == sum(p.numel() for p in tv.parameters())
    assert B.count_parameters(staged, [staged.head_index]) > 0


def test_staged_forward_equals_torchvision(wrapped):
    arch, tv, staged = wrapped
    x = _input(arch)
    with torch.no_grad():
        expected = tv(x)
        got = staged(x)
    assert isinstance(got, torch.Tensor) and got.shape == (2, NUM_CLASSES)
    assert torch.allclose(got, expected, atol=1e-5, rtol=0), (got - expected).abs().max()
    assert staged.aux_logits == []  # eval mode never records aux logits


def test_torchvision_state_dict_loads_into_plain_torchvision(wrapped):
    """The one StagedModel -> torchvision key mapping (evotune.backbones.torchvision_key_map):
    every key maps, a model built from the exported description loads it strictly, and its
    eval-mode forward is the staged model's."""
    arch, tv, staged = wrapped
    mapping = B.torchvision_key_map(staged)
    assert set(mapping) == set(staged.state_dict()) and set(mapping.values()) == set(tv.state_dict())
    exported = B.torchvision_state_dict(staged)
    assert list(exported) == list(tv.state_dict())  # torchvision's own key order
    for key, value in tv.state_dict().items():
        assert torch.equal(exported[key], value), key
    description = B.torchvision_description(staged)
    assert description["kwargs"]["num_classes"] == NUM_CLASSES
    with torch.device("meta"):
        plain = B.construct_from_description(description)
    plain = plain.to_empty(device="cpu")
    plain.load_state_dict(exported, strict=True)
    plain.eval()
    reference = _torchvision_model(arch) if arch in ("resnet10", "resnet18", "vit_tiny32") else None
    if reference is not None:  # the description builds the very architecture of the independent builder
        assert type(plain) is type(reference) and str(plain) == str(reference)
    x = _input(arch)
    with torch.no_grad():
        assert torch.equal(plain(x), staged(x))


@pytest.mark.parametrize("arch", ["resnet10", "mobilenet_v3_small", "vit_tiny32"])
def test_torchvision_export_after_a_new_head(arch):
    torch.manual_seed(0)
    staged = B.replace_head(B.build_model(arch, 5), 3).eval()
    plain = B.to_torchvision(staged)
    assert not plain.training
    x = _input(arch)
    with torch.no_grad():
        assert torch.equal(plain(x), staged(x)) and plain(x).shape == (2, 3)


def test_descriptions_only_import_torchvision_models():
    with pytest.raises(ValueError, match="refusing"):
        B.construct_from_description({"callable": "os.system", "args": ["true"], "kwargs": {}})
    with pytest.raises(ValueError, match="refusing"):
        B.construct_from_description({"callable": "torchvision.models.resnet18", "args": [{"import": "os.system"}]})


def test_blocks_are_in_forward_order(wrapped):
    """Forward hooks on the torchvision model's leaf modules: first activations visit the
    stages in increasing order."""
    arch, tv, staged = wrapped
    stage_of = {}
    for i, stage in enumerate(staged.stages):
        for m in stage.modules():
            stage_of.setdefault(id(m), i)
    leaves = [m for m in tv.modules() if not list(m.children())]
    assert all(id(m) in stage_of for m in leaves), f"{arch}: a torchvision module is in no stage"
    order: list[int] = []
    seen: set[int] = set()

    def hook(module, args, output):
        if id(module) not in seen:
            seen.add(id(module))
            order.append(stage_of[id(module)])

    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        with torch.no_grad():
            tv(_input(arch, batch=1))
    finally:
        for h in handles:
            h.remove()
    assert order == sorted(order), f"{arch}: stage order of first activations {order}"
    # Every block except Inception's aux stage (eval mode) is visited.
    expected = set(range(staged.num_blocks)) - (
        {staged.block_names.index("AuxLogits")} if arch == "inception_v3" else set()
    )
    assert set(order) == expected


def test_forward_from_and_until_compose_without_touching_inputs(wrapped):
    arch, _, staged = wrapped
    x = _input(arch, batch=1)
    with torch.no_grad():
        full = staged(x)
        h = x
        for i, stage in enumerate(staged.stages):
            before = h.clone()
            out = stage(h)
            assert torch.equal(h, before), f"{arch}: stage {i} modified its input in place"
            h = out
        assert torch.equal(h, full)
        k = staged.num_blocks // 2
        mid = staged.forward_until(k, x)
        assert torch.allclose(staged.forward_from(k, mid), full, atol=1e-6, rtol=0)
        assert torch.equal(staged.forward_until(0, x), x)
        assert torch.equal(staged.forward_from(staged.num_blocks, full), full)
    with pytest.raises(IndexError):
        staged.forward_from(staged.num_blocks + 1, x)


# --------------------------------------------------------------------------------------
# Vision transformers, Swin, ConvNeXt: blocks as timm groups the same families
# --------------------------------------------------------------------------------------
def test_transformer_and_convnext_blocks():
    """ViT: patch embedding + class token + position embedding, the encoder layers in four equal groups, final
    norm + classifier; Swin / ConvNeXt: stem, each stage with the downsampling that starts it (as timm), head."""
    assert B.get_arch("vit_b_16").block_names == ("stem", "encoder1", "encoder2", "encoder3", "encoder4", "head")
    assert B.get_arch("vit_tiny32").block_names == B.get_arch("vit_b_16").block_names
    assert B.get_arch("swin_t").block_names == ("stem", "stage1", "stage2", "stage3", "stage4", "head")
    assert B.get_arch("convnext_tiny").block_names == ("stem", "stage1", "stage2", "stage3", "stage4", "classifier")
    with torch.device("meta"):
        vit = torchvision.models.vit_b_16(num_classes=NUM_CLASSES)
        swin = torchvision.models.swin_t(num_classes=NUM_CLASSES)
        convnext = torchvision.models.convnext_tiny(num_classes=NUM_CLASSES)
    staged = B.staged_from_torchvision("vit_b_16", vit)
    layers = list(vit.encoder.layers)
    for g in range(4):  # 12 layers: 3 a group, in order
        assert list(staged.stages[1 + g].children()) == layers[3 * g:3 * g + 3]
    stem, head = dict(staged.stages[0].named_parameters()), dict(staged.stages[-1].named_parameters())
    assert stem["class_token"] is vit.class_token and stem["pos_embedding"] is vit.encoder.pos_embedding
    assert head["ln.weight"] is vit.encoder.ln.weight and head["heads.head.weight"] is vit.heads.head.weight
    for arch, model in (("vit_b_16", vit), ("swin_t", swin), ("convnext_tiny", convnext)):
        staged = B.staged_from_torchvision(arch, model)
        owner: dict[int, int] = {}
        for i, stage in enumerate(staged.stages):
            for p in stage.parameters():
                assert id(p) not in owner, f"{arch}: parameter in blocks {owner.get(id(p))} and {i}"
                owner[id(p)] = i
        assert set(owner) == {id(p) for p in model.parameters()}
        mapping = B.torchvision_key_map(staged)  # every key of a fresh torchvision model, both ways
        assert set(mapping.values()) == set(model.state_dict())
    f = swin.features
    staged = B.staged_from_torchvision("swin_t", swin)
    assert staged.stages[0] is f[0] and staged.stages[1] is f[1]
    assert [list(staged.stages[k].children()) for k in (2, 3, 4)] == [[f[2], f[3]], [f[4], f[5]], [f[6], f[7]]]
    with pytest.raises(ValueError, match="4 equal groups"):
        B.staged_from_torchvision("vit_tiny32", VisionTransformer(32, 4, 3, 2, 8, 8))


def test_imagenet_weights_file_names_of_the_new_families(tmp_path):
    for arch, name in (("vit_b_16", "vit_b_16-c867db91.pth"), ("swin_t", "swin_t-704ceda3.pth"),
                       ("convnext_tiny", "convnext_tiny-983f1562.pth")):
        path = B.imagenet_weights_path(arch, tmp_path)
        assert path == tmp_path / "hub" / "checkpoints" / name
        problem = B.imagenet_weights_problem(arch, tmp_path)
        assert str(path) in problem and f"https://download.pytorch.org/models/{name}" in problem
        with pytest.raises(B.BackboneWeightsError, match=re.escape(str(path))):
            B.build_model(arch, 3, weights="imagenet", torch_home=tmp_path)
    assert "has no ImageNet weights" in B.imagenet_weights_problem("vit_tiny32")


# --------------------------------------------------------------------------------------
# Inception auxiliary classifier
# --------------------------------------------------------------------------------------
def test_inception_aux_logits_in_training_mode():
    torch.manual_seed(0)
    tv = _torchvision_model("inception_v3")
    staged = B.staged_from_torchvision("inception_v3", tv)
    aux_index = staged.block_names.index("AuxLogits")
    staged.train()
    x = torch.randn(2, 3, 299, 299, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.manual_seed(5)
        expected = tv(x)  # InceptionOutputs(logits, aux_logits)
        torch.manual_seed(5)  # same dropout mask
        got = staged(x)
        assert isinstance(got, torch.Tensor)
        assert torch.allclose(got, expected.logits, atol=1e-5, rtol=0)
        assert len(staged.aux_logits) == 1
        assert torch.allclose(staged.aux_logits[0], expected.aux_logits, atol=1e-5, rtol=0)
        # Pass-through on the main path.
        h = torch.randn(2, 768, 17, 17)
        assert staged.stages[aux_index](h) is h
        staged.aux_logits.clear()
        # Emptied at the start of every forward; nothing recorded in eval mode.
        staged.eval()
        staged(torch.randn(1, 3, 75, 75))
        assert staged.aux_logits == []
    # The list survives a deep copy wired to the copy.
    clone = copy.deepcopy(staged).train()
    with torch.no_grad():
        clone.forward_from(aux_index, clone.forward_until(aux_index, x))
    assert len(clone.aux_logits) == 1 and staged.aux_logits == []


# --------------------------------------------------------------------------------------
# Heads
# --------------------------------------------------------------------------------------
def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize(
    "arch, head_keys",
    [
        ("resnet18", ["stages.5.fc."]),
        ("mobilenet_v3_small", ["stages.7.classifier.3."]),  # classifier.0 keeps weights
        ("inception_v3", ["stages.13.fc.", "stages.9.aux.fc."]),
        ("vit_tiny32", ["stages.5.heads.head."]),
    ],
)
def test_replace_head_keeps_backbone(arch, head_keys):
    torch.manual_seed(0)
    model = B.build_model(arch, 10).eval()
    before = _state(model)
    params_before = {n: p for n, p in model.named_parameters()}
    B.replace_head(model, 3)
    assert model.num_classes == 3
    x = _input(arch, batch=1)
    with torch.no_grad():
        assert model(x).shape == (1, 3)
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert _head_prefixes(model) == tuple(head_keys)
    for k in before:
        if not k.startswith(tuple(head_keys)):
            assert torch.equal(after[k], before[k]), k
    for n, p in model.named_parameters():
        if n.startswith(tuple(head_keys)):
            assert p.shape[0] == 3 and p is not params_before[n]
        else:
            assert p is params_before[n]  # same objects: optimiser groups stay valid
    # A generator makes the fresh head reproducible.
    a = B.replace_head(model, 4, generator=torch.Generator().manual_seed(9))
    wa = {k: v.clone() for k, v in a.state_dict().items() if k.startswith(tuple(head_keys))}
    B.replace_head(model, 4, generator=torch.Generator().manual_seed(9))
    for k, v in wa.items():
        assert torch.equal(model.state_dict()[k], v)


# --------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------
def _checkpoint(model: B.StagedModel, spec: B.ArchSpec, **kw) -> B.BackboneCheckpoint:
    return B.make_checkpoint(
        model,
        num_classes=model.num_classes,
        input_size=spec.input_size,
        resize_size=spec.resize_size,
        mean=spec.mean,
        std=spec.std,
        source="test",
        **kw,
    )


@pytest.mark.parametrize("arch", ["resnet10", "inception_v3", "vit_tiny32"])
def test_checkpoint_roundtrip(tmp_path, arch):
    spec = B.get_arch(arch)
    torch.manual_seed(0)
    model = B.build_model(arch, 5)
    _randomise_buffers(model)
    model.eval()
    ckpt = _checkpoint(model, spec, extra={"epochs": 3, "note": "x", "acc": [0.5, 0.6]})
    assert set(ckpt.to_dict()) >= {
        "format", "arch", "num_classes", "block_names", "input_size", "resize_size",
        "mean", "std", "source", "state_dict", "extra",
    }  # fmt: skip
    path = tmp_path / "backbone.pt"
    torch.save(ckpt.to_dict(), path)
    raw = torch.load(path, weights_only=True)  # plain types + tensors only
    assert raw["format"] == B.CHECKPOINT_FORMAT and raw["extra"]["acc"] == [0.5, 0.6]
    loaded = B.load_checkpoint(path)
    assert isinstance(loaded, B.BackboneCheckpoint) and loaded.extra == ckpt.extra and loaded.dataset is None
    rebuilt = B.model_from_checkpoint(loaded).eval()
    assert rebuilt.arch == arch and rebuilt.num_classes == 5
    x = _input(arch, batch=1)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model(x))
    # Via build_model(weights=<path>), and with a different number of classes.
    other = B.build_model(arch, 3, weights=str(path))
    sd, ref = other.state_dict(), model.state_dict()
    head = _head_prefixes(other)
    assert other.num_classes == 3
    for k, v in ref.items():
        if k.startswith(head):
            assert sd[k].shape[0] == 3
        else:
            assert torch.equal(sd[k], v), k
    with pytest.raises(B.BackboneWeightsError, match="backbone.arch"):
        B.build_model("resnet18", 3, weights=path)  # checkpoint of another architecture


def _head_prefixes(model: B.StagedModel) -> tuple[str, ...]:
    """State-dict prefixes of the fresh Linear(s) that replace_head creates."""
    name, _ = _head_linear(model)
    prefixes = [f"stages.{model.head_index}.{name}."]
    if "AuxLogits" in model.block_names:
        prefixes.append(f"stages.{model.block_names.index('AuxLogits')}.aux.fc.")
    return tuple(prefixes)


def test_checkpoint_errors(tmp_path):
    spec = B.get_arch("resnet10")
    model = B.build_model("resnet10", 4)
    missing = tmp_path / "nope.pt"
    with pytest.raises(B.BackboneWeightsError, match="not found") as info:
        B.load_checkpoint(missing)
    assert str(missing) in str(info.value) and "backbone.weights" in str(info.value)

    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"this is not a torch file")
    with pytest.raises(B.BackboneWeightsError, match="could not be read") as info:
        B.load_checkpoint(corrupt)
    assert str(corrupt) in str(info.value)

    bare = tmp_path / "bare.pt"
    torch.save(model.state_dict(), bare)
    with pytest.raises(B.BackboneWeightsError, match="bare state_dict"):
        B.load_checkpoint(bare)

    ckpt = _checkpoint(model, spec)
    broken = dataclasses.replace(ckpt, state_dict={k: v for k, v in ckpt.state_dict.items() if not k.startswith("stages.3.")})
    with pytest.raises(B.BackboneWeightsError, match="does not match"):
        B.model_from_checkpoint(broken)
    wrong_arch = dataclasses.replace(ckpt, arch="resnet18", block_names=list(B.get_arch("resnet18").block_names))
    with pytest.raises(B.BackboneWeightsError, match="does not match"):
        B.model_from_checkpoint(wrong_arch)
    with pytest.raises(B.BackboneWeightsError, match="unknown"):
        B.model_from_checkpoint(dataclasses.replace(ckpt, arch="lenet"))
    with pytest.raises(TypeError, match="BackboneCheckpoint"):
        B.model_from_checkpoint(ckpt.to_dict())  # plain data only at the catalog boundary
    with pytest.raises(TypeError):
        _checkpoint(model, spec, extra={"bad": object()})
    with pytest.raises(ValueError):
        B.make_checkpoint(
            model, num_classes=9, input_size=32, resize_size=32, mean=spec.mean, std=spec.std, source="t"
        )


# --------------------------------------------------------------------------------------
# ImageNet weights, offline
# --------------------------------------------------------------------------------------
def test_imagenet_missing_file_error_names_path_and_url(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "env_home"))

    def no_download(*args, **kwargs):  # pragma: no cover - must not be reached
        raise AssertionError("build_model tried to download")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    url = torchvision.models.get_weight("ResNet50_Weights.IMAGENET1K_V2").url
    # Via TORCH_HOME.
    expected = tmp_path / "env_home" / "hub" / "checkpoints" / "resnet50-11ad3fa6.pth"
    assert B.imagenet_weights_path("resnet50") == expected
    with pytest.raises(B.BackboneWeightsError) as info:
        B.build_model("resnet50", 10, weights="imagenet")
    msg = str(info.value)
    for part in ("resnet50", str(expected), url, "TORCH_HOME", "backbone.weights"):
        assert part in msg, part
    # Via the torch_home argument.
    expected = tmp_path / "arg_home" / "hub" / "checkpoints" / "resnet50-11ad3fa6.pth"
    with pytest.raises(B.BackboneWeightsError, match="resnet50-11ad3fa6.pth") as info:
        B.build_model("resnet50", 10, weights="imagenet", torch_home=tmp_path / "arg_home")
    assert str(expected) in str(info.value)
    # An architecture without ImageNet weights.
    with pytest.raises(B.BackboneWeightsError, match="no ImageNet weights") as info:
        B.build_model("resnet10", 10, weights="imagenet")
    assert "resnet10" in str(info.value)
    with pytest.raises(B.BackboneWeightsError, match="not found"):
        B.build_model("resnet18", 10, weights=str(tmp_path / "missing.pt"))


def test_imagenet_weights_loaded_from_hub_cache(tmp_path, monkeypatch):
    torch.manual_seed(0)
    tv = torchvision.models.resnet18(weights=None)  # stands in for the real ImageNet file
    _randomise_buffers(tv)
    path = tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    path.parent.mkdir(parents=True)
    torch.save(tv.state_dict(), path)
    tv_state = tv.state_dict()

    def check(model: B.StagedModel) -> None:
        assert model.num_classes == 13
        # Map staged names back to torchvision names through shared structure.
        reference = B.staged_from_torchvision("resnet18", tv).state_dict()
        got = model.state_dict()
        assert got.keys() == reference.keys()
        for k, v in reference.items():
            if k.startswith("stages.5.fc."):
                assert got[k].shape[0] == 13
            else:
                assert torch.equal(got[k], v), k

    check(B.build_model("resnet18", 13, weights="imagenet", torch_home=tmp_path))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    check(B.build_model("resnet18", 13, weights="imagenet"))
    assert len(tv_state) == len(tv.state_dict())

    # A truncated file gives a clear error.
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(B.BackboneWeightsError, match="truncated or corrupt"):
        B.build_model("resnet18", 13, weights="imagenet")


def test_imagenet_densenet_legacy_keys_from_the_cache_and_never_a_download(tmp_path, monkeypatch):
    torch.manual_seed(0)
    tv = torchvision.models.densenet121(weights=None)
    # The published file predates BatchNorm's num_batches_tracked and uses old
    # 'norm.1'-style dense-layer keys; mimic both.
    pattern = re.compile(r"^(.*denselayer\d+\.)(norm|conv)([12])\.(.*)$")
    legacy = {}
    for k, v in tv.state_dict().items():
        if k.endswith("num_batches_tracked"):
            continue
        m = pattern.match(k)
        legacy[f"{m.group(1)}{m.group(2)}.{m.group(3)}.{m.group(4)}" if m else k] = v
    assert any(".norm.1." in k for k in legacy)

    def no_download(*args, **kwargs):  # pragma: no cover - must not be reached
        raise AssertionError("build_model tried to download")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    with pytest.raises(B.BackboneWeightsError, match="cannot download"):
        B.build_model("densenet121", 4, weights="imagenet", torch_home=tmp_path)
    path = B.imagenet_weights_path("densenet121", tmp_path)
    url = torchvision.models.get_weight("DenseNet121_Weights.IMAGENET1K_V1").url
    assert path.parent == tmp_path / "hub" / "checkpoints" and path.name == url.rsplit("/", 1)[1]
    path.parent.mkdir(parents=True)
    torch.save(legacy, path)
    model = B.build_model("densenet121", 4, weights="imagenet", torch_home=tmp_path)
    assert torch.equal(
        model.stages[1].denselayer1.norm1.weight, tv.features.denseblock1.denselayer1.norm1.weight
    )
    assert model.num_classes == 4


def test_one_message_for_missing_imagenet_weights(tmp_path, monkeypatch, base_params):
    """build_model, the parameter check and the paper check give the same text."""
    from evotune.paper_setting import weights_problems
    from evotune.validation import ParameterError, validate_run

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "env"))
    message = B.imagenet_weights_problem("resnet18", tmp_path / "arg")
    assert message.startswith("ImageNet weights of resnet18 missing")
    with pytest.raises(B.BackboneWeightsError) as info:
        B.build_model("resnet18", 3, weights="imagenet", torch_home=tmp_path / "arg")
    assert str(info.value) == message
    assert weights_problems("resnet18", {"weights": "imagenet", "torch_home": str(tmp_path / "arg")}) == [message]
    params = copy.deepcopy(base_params)
    params["backbone"].update(arch="resnet18", weights="imagenet", torch_home=str(tmp_path / "arg"))
    with pytest.raises(ParameterError) as info:
        validate_run(params, ["load_pretrained_backbone"])
    assert message in str(info.value)
    # an architecture without ImageNet weights: one message too
    no_weights = B.imagenet_weights_problem("resnet10")
    assert "no ImageNet weights" in no_weights and "backbone.weights" in no_weights
    # the file is there: no problem
    path = B.imagenet_weights_path("resnet18", tmp_path / "arg")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"")
    assert B.imagenet_weights_problem("resnet18", tmp_path / "arg") is None


def test_redraw_head_keeps_hidden_classifier_layers_and_is_seeded():
    from evotune.backbones import build_model, head_linears, redraw_head

    torch.manual_seed(0)
    model = build_model("vgg19", 5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    redraw_head(model, 3)
    after = model.state_dict()
    (head,) = head_linears(model)
    head_keys = {k for k, v in after.items() if v.data_ptr() in (head.weight.data_ptr(), head.bias.data_ptr())}
    assert len(head_keys) == 2
    for k in before:
        assert torch.equal(before[k], after[k]) != (k in head_keys), k  # only the final Linear changed
    w3 = head.weight.clone()
    redraw_head(model, 4)
    assert not torch.equal(w3, head.weight)
    redraw_head(model, 3)
    assert torch.equal(w3, head.weight)


def test_redraw_head_redraws_the_inception_aux_classifier_too():
    from evotune.backbones import build_model, head_linears, redraw_head

    model = build_model("inception_v3", 4)
    main, aux = head_linears(model)
    a0 = aux.weight.clone()
    redraw_head(model, 1)
    assert not torch.equal(a0, aux.weight)


def test_a_catalog_file_is_a_checkpoint_file(tmp_path):
    """What the catalog writes for `backbone` (TypedTorchDataset) is what `backbone.weights: <path>` reads."""
    from evotune.io import TypedTorchDataset

    artifact = "evotune.backbones.BackboneCheckpoint"
    model = B.build_model("resnet10", 3)
    ckpt = dataclasses.replace(_checkpoint(model, B.get_arch("resnet10")), dataset="d", backbone_id="b", created="t")
    TypedTorchDataset(artifact=artifact, filepath=str(tmp_path / "backbone.pt")).save(ckpt)
    for back in (TypedTorchDataset(artifact=artifact, filepath=str(tmp_path / "backbone.pt")).load(),
                 B.load_checkpoint(tmp_path / "backbone.pt")):
        assert isinstance(back, B.BackboneCheckpoint) and (back.arch, back.dataset, back.created) == ("resnet10", "d", "t")
        assert back.state_dict.keys() == ckpt.state_dict.keys()
        assert all(torch.equal(back.state_dict[k], v) for k, v in ckpt.state_dict.items())
    torch.save(model.state_dict(), tmp_path / "bare.pt")  # a foreign file under the catalog's name
    with pytest.raises(Exception, match="bare state_dict"):
        TypedTorchDataset(artifact=artifact, filepath=str(tmp_path / "bare.pt")).load()
