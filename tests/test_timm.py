"""timm backbones (``backbone.arch: timm/<model_name>``): blocks from timm's ``group_matcher``, the staged
forward, weights from the Hugging Face hub cache or a local file, checkpoints, the frozen-prefix rule.

timm is optional: install it with ``pip install -e '.[timm]'``; without it these tests are skipped.
Tiny configurations only (random init, small inputs).
"""

from __future__ import annotations

import copy
import inspect

import pytest
import torch

timm = pytest.importorskip("timm", reason="timm is not installed (pip install -e '.[timm]')")

from evotune import backbones as B  # noqa: E402
from evotune.backbones.timm_models import build_timm, staged_from_timm, timm_weights_problem  # noqa: E402
from evotune.training import MODE_DEPENDENT_TYPES, TrainingPlan, apply_freezing, mode_dependent  # noqa: E402

N_CLS = 5
#: (timm model, create_model options of a tiny variant, input size, expected blocks)
TINY = {
    "vit_tiny_patch16_224": (dict(img_size=32, depth=4), 32,
                             ("stem", "blocks0", "blocks1", "blocks2", "blocks3+norm", "head")),
    "convnext_atto": ({}, 64, ("stem", "stages0", "stages1", "stages2", "stages3", "head")),
    "resnet10t": ({}, 64, ("stem", "layer1", "layer2", "layer3", "layer4", "head")),
}


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors (conftest)


def _x(size: int, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("name", list(TINY))
def test_blocks_follow_timms_groups_and_the_staged_forward_is_timms(name):
    kwargs, size, blocks = TINY[name]
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=N_CLS, **kwargs).eval()
    staged = staged_from_timm(f"timm/{name}", model)
    assert tuple(staged.block_names) == blocks and not staged.training
    # every parameter in exactly one block, the timm model's own objects, under its timm name
    owner: dict[int, int] = {}
    for i, stage in enumerate(staged.stages):
        for p in stage.parameters():
            assert id(p) not in owner
            owner[id(p)] = i
    assert set(owner) == {id(p) for p in model.parameters()}
    timm_keys = {f"stages.{i}.{k}": k for i, s in enumerate(staged.stages) for k in s.state_dict()}
    assert set(timm_keys.values()) == set(model.state_dict()) and set(timm_keys) == set(staged.state_dict())
    # blocks in forward order: timm's groups are numbered in forward order
    from timm.models._manipulate import group_with_matcher

    groups = group_with_matcher(list(model.named_parameters()), model.group_matcher(coarse=True))
    for i, (_, names) in enumerate(sorted(groups.items())):
        assert {f"stages.{i}.{n}" for n in names} == {f"stages.{i}.{n}" for n, _ in staged.stages[i].named_parameters()}
    x = _x(size)
    with torch.no_grad():
        assert torch.equal(staged(x), model(x))
        k = staged.num_blocks // 2
        before = x.clone()
        assert torch.equal(staged.forward_from(k, staged.forward_until(k, x)), model(x))
        assert torch.equal(x, before)
    clone = copy.deepcopy(staged)  # the search copies models
    with torch.no_grad():
        assert torch.equal(clone(x), model(x))


def test_train_mode_and_stochastic_depth_are_timms():
    """Modules that read their mode stay whole when traced: in train mode, with stochastic depth and dropout, the
    staged model draws what timm draws."""
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=N_CLS, img_size=32, depth=4,
                              drop_path_rate=0.2, drop_rate=0.1, attn_drop_rate=0.1).train()
    staged = staged_from_timm("timm/vit_tiny_patch16_224", model)
    x = _x(32)
    torch.manual_seed(3)
    expected = model(x)
    torch.manual_seed(3)
    assert torch.equal(staged(x), expected)
    torch.manual_seed(4)
    assert not torch.equal(staged(x), expected)
    # the frozen-prefix rule knows timm's modules: every module reading self.training is one mode_dependent knows
    for m in staged.modules():
        fwd = type(m).forward
        if inspect.isfunction(fwd) and "self.training" in inspect.getsource(fwd) and type(m).__name__ != "DropPath":
            assert any(isinstance(k, tuple(MODE_DEPENDENT_TYPES)) for k in m.modules()), type(m).__qualname__
    assert mode_dependent(staged.stages[1]) and not mode_dependent(staged.stages[0])  # DropPath 0.05 vs dropout 0
    plan = TrainingPlan(block_lrs=[None] * staged.head_index + [1e-3])
    apply_freezing(staged, plan)
    assert plan.frozen_prefix(staged, "eval") == staged.head_index and plan.frozen_prefix(staged, "train") == 1


def test_get_arch_and_build_model_take_timm_names():
    spec = B.get_arch("timm/resnet10t")
    assert spec.block_names == TINY["resnet10t"][2] and spec.imagenet_weights == "timm/resnet10t.c3_in1k"
    assert (spec.input_size, spec.mean, spec.interpolation) == (176, B.IMAGENET_MEAN, "bicubic")
    vit = B.get_arch("timm/vit_tiny_patch16_224")
    assert vit.fixed_input and vit.num_blocks == 14 and vit.block_names[-2:] == ("blocks11+norm", "head")
    model = B.build_model("timm/resnet10t", 3)
    assert model.num_classes == 3 and model.training and tuple(model.block_names) == spec.block_names
    with pytest.raises(B.UnknownArchitectureError, match="timm.list_models"):
        B.get_arch("timm/no_such_model")


def test_offline_weights_from_the_hub_cache_or_a_file(tmp_path):
    from safetensors.torch import save_file

    problem = timm_weights_problem("timm/resnet10t", tmp_path)
    folder = tmp_path / "models--timm--resnet10t.c3_in1k"
    assert str(folder) in problem and "model.safetensors" in problem and "hf download timm/resnet10t.c3_in1k" in problem
    with pytest.raises(B.BackboneWeightsError, match="cannot download"):
        build_timm("timm/resnet10t", 3, weights="imagenet", hf_cache=tmp_path)
    # the file where the hub cache keeps it: loaded, the classifier replaced for 3 classes
    torch.manual_seed(1)
    source = timm.create_model("resnet10t", pretrained=False)
    snapshot = folder / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text("abc123")
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(snapshot / "model.safetensors"))
    assert timm_weights_problem("timm/resnet10t", tmp_path) is None
    model = build_timm("timm/resnet10t", 3, weights="imagenet", hf_cache=tmp_path)
    state = model.state_dict()
    for k, v in source.state_dict().items():
        if not k.startswith("fc."):
            assert torch.equal(state[f"stages.0.{k}" if f"stages.0.{k}" in state else _key(model, k)], v), k
    assert model.num_classes == 3
    # a local timm weights file as backbone.weights
    local = B.build_model("timm/resnet10t", 3, weights=str(snapshot / "model.safetensors"))
    assert all(torch.equal(a, b) for (k, a), b in zip(local.state_dict().items(), state.values()) if "fc." not in k)


def _key(model: B.StagedModel, timm_key: str) -> str:
    return next(k for k in model.state_dict() if k.split(".", 2)[2] == timm_key)


def test_checkpoint_of_a_tiny_timm_variant_round_trips(tmp_path):
    kwargs, size, _ = TINY["vit_tiny_patch16_224"]
    torch.manual_seed(0)
    model = build_timm("timm/vit_tiny_patch16_224", 4, timm_kwargs=kwargs).eval()
    spec = B.get_arch("timm/vit_tiny_patch16_224")
    ckpt = B.make_checkpoint(model, num_classes=4, input_size=size, resize_size=size, mean=spec.mean, std=spec.std,
                             source="test")
    assert ckpt.arch_config == {"timm_kwargs": kwargs}
    path = tmp_path / "vit.pt"
    torch.save(ckpt.to_dict(), path)
    rebuilt = B.model_from_checkpoint(B.load_checkpoint(path)).eval()
    x = _x(size)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model(x))
    other = B.build_model("timm/vit_tiny_patch16_224", 2, weights=str(path))
    assert other.num_classes == 2
    with pytest.raises(ValueError, match="timm model"):
        B.torchvision_key_map(model)


def test_lora_adapts_a_timm_vision_transformer():
    """timm's attention projections and MLP layers are Linear modules: LoRA wraps them inside the traced stages."""
    from evotune.methods.lora import LoRALinear, add_lora

    kwargs, size, _ = TINY["vit_tiny_patch16_224"]
    torch.manual_seed(0)
    model = build_timm("timm/vit_tiny_patch16_224", 3, timm_kwargs=kwargs).eval()
    keys = list(model.state_dict())
    x = _x(size)
    with torch.no_grad():
        before = model(x)
    wrappers, undo = add_lora(model, 2, 4.0)
    assert sum(isinstance(w, LoRALinear) for w in wrappers) == 4 * 4  # qkv, proj, fc1, fc2 of each layer
    with torch.no_grad():
        torch.testing.assert_close(model(x), before)
        for w in wrappers:
            w.lora_B.weight.fill_(0.01)
        assert not torch.allclose(model(x), before, atol=1e-4)  # the traced stages call the wrappers
    undo()
    assert list(model.state_dict()) == keys


def test_a_timm_run_is_checked_before_it_starts(conf_dir):
    """Validation knows timm names: the whole default pipeline, export included (a timm model exports as a timm
    model), passes; a model of a fixed input size that the task's images do not have stops before training."""
    from kedro.config import OmegaConfigLoader
    from kedro.framework.project import configure_project

    from evotune.pipeline_registry import register_pipelines
    from evotune.validation import ParameterError, validate_run

    params = OmegaConfigLoader(str(conf_dir), base_env="base", default_run_env="local")["parameters"]
    params["backbone"]["arch"] = params["source_pretraining"]["arch"] = "timm/resnet10t"
    configure_project("evotune")
    default = [n.name for n in register_pipelines()["__default__"].nodes]
    assert "export_best_model" in default
    validate_run(params, default)
    params["backbone"]["arch"] = "timm/vit_tiny_patch16_224"  # 224px only; the embedded task is 32px
    with pytest.raises(ParameterError, match="takes 224x224 inputs only"):
        validate_run(params, default)
