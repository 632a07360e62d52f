"""The exported model (torchvision and timm): both formats load and predict without this package, with the lines
docs/guides/export.md shows; metadata; selection rules; a model torch.export cannot capture."""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from evotune.backbones import ARCHITECTURES
from evotune.export import ArchiveNotWritten, model_from_export, select_run
from evotune.io import TorchExportDataset
from evotune.pipelines.export.nodes import ExportParams
from evotune.retraining import TrainedRun, TrainedVariant
from evotune.training import Normalizer
from evotune.validation import ParameterError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def resnet18_export(tmp_path_factory, make_export):
    """A standard torchvision architecture (README's three lines), exported without training."""
    return make_export(tmp_path_factory.mktemp("export_resnet18"), arch="resnet18", train=False)


@pytest.fixture(params=["resnet10", "resnet18", "timm"])
def export(request):
    return request.getfixturevalue({"resnet10": "resnet10_export", "resnet18": "resnet18_export",
                                    "timm": "timm_export"}[request.param])


#: the user's page that shows the loading lines (the test below runs them as written there)
GUIDE = ROOT / "docs" / "guides" / "export.md"
#: in each kind of snippet of GUIDE: the text the test replaces with the export's own (model line, file)
SNIPPETS = {
    "torchvision": ("torchvision.models.resnet50(num_classes=10)", '"exported_model.safetensors"'),
    "timm": ('timm.create_model("resnet10t", num_classes=10)', '"exported_model.safetensors"'),
    "archive": ('"exported_model.pt2"',),
}


def guide_snippets() -> dict[str, str]:
    """The three-line python blocks of GUIDE: one loads into torchvision, one into timm, one the archive."""
    blocks = re.findall(r"```python\n(.*?)```", GUIDE.read_text(), flags=re.S)
    out = {}
    for kind, needles in SNIPPETS.items():
        found = [b for b in blocks if needles[0] in b]
        assert len(found) == 1, f"{GUIDE}: expected one python block with {needles[0]!r}, found {len(found)}"
        code = found[0]
        assert len([line for line in code.splitlines() if line.strip()]) == 3, code
        assert all(n in code for n in needles), (kind, code)
        out[kind] = code
    return out


def runnable(snippet: str, replace: dict[str, str]) -> str:
    for old, new in replace.items():
        assert old in snippet
        snippet = snippet.replace(old, new)
    return snippet


# Runs in a fresh interpreter (-I: no PYTHONPATH, no user site, no current directory on sys.path)
# in which `evotune` cannot be imported: only torch, torchvision, timm, safetensors and json are used.
STANDALONE = textwrap.dedent('''
    import sys

    class _NoEvotune:
        def find_spec(self, name, path=None, target=None):
            if name == "evotune" or name.startswith("evotune."):
                raise ImportError("evotune is blocked in this test")
            return None

    sys.meta_path.insert(0, _NoEvotune())
    try:
        import evotune  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("evotune was importable")

    import json
    import torch


    def run(weights_code, archive_code, metadata, images, out):
        meta = json.load(open(metadata))
        images = torch.load(images, weights_only=True)          # uint8 [N, 3, S, S], decoded and cropped

        # 1. the guide's three lines: safetensors into torchvision or timm (its model line and file filled in)
        scope = {}
        exec(weights_code, scope)
        model = scope["model"]
        assert not model.training
        pre = meta["preprocessing"]
        mean = torch.tensor(pre["mean"]).view(1, 3, 1, 1)
        std = torch.tensor(pre["std"]).view(1, 3, 1, 1)
        with torch.no_grad():
            weights_logits = model((images.float() / 255 - mean) / std)

        # 2. the guide's lines for the torch.export archive: uint8 in, logits out, any batch size
        with torch.no_grad():
            scope = {"images": images}
            exec(archive_code, scope)
            archive_logits = scope["logits"]
            one = scope["program"].module()(images[:1])
        torch.save({"weights": weights_logits, "archive": archive_logits, "one": one}, out)


    for job in json.load(open(sys.argv[1])):
        run(**job)
    assert not any(m.startswith("evotune") for m in sys.modules), "evotune got imported"
''')


def test_both_exports_predict_like_the_project_model_without_this_package(resnet10_export, resnet18_export, timm_export,
                                                                         tmp_path):
    """The guide's lines (docs/guides/export.md), as written there but for the model line and the file names, for a
    torchvision architecture with a builder (resnet18), one without (resnet10: the metadata's line) and a timm model."""
    exports = {"resnet10": resnet10_export, "resnet18": resnet18_export, "timm": timm_export}
    snippets = guide_snippets()
    jobs = []
    for arch, export in exports.items():
        torch.save(export.test.images, tmp_path / f"{arch}_images.pt")
        f = export.files
        lib = export.metadata["architecture"]["library"]
        model_line, weights_file = SNIPPETS[lib]
        weights_code = runnable(snippets[lib], {model_line: export.metadata["architecture"][lib]["python"],
                                                weights_file: json.dumps(str(f["weights"]))})
        archive_code = runnable(snippets["archive"], {SNIPPETS["archive"][0]: json.dumps(str(f["archive"]))})
        jobs.append({"weights_code": weights_code, "archive_code": archive_code, "metadata": str(f["metadata"]),
                     "images": str(tmp_path / f"{arch}_images.pt"), "out": str(tmp_path / f"{arch}_out.pt")})
    assert jobs[1]["weights_code"] == runnable(snippets["torchvision"], {  # resnet18: the guide's lines themselves
        "resnet50": "resnet18", "num_classes=10": "num_classes=4", SNIPPETS["torchvision"][1]: json.dumps(
            str(resnet18_export.files["weights"]))})
    assert 'timm.create_model("resnet10t", num_classes=4)' in jobs[2]["weights_code"]
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    script = tmp_path / "standalone.py"
    script.write_text(STANDALONE)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    proc = subprocess.run([sys.executable, "-I", str(script), str(tmp_path / "jobs.json")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for arch, export in exports.items():
        out = torch.load(tmp_path / f"{arch}_out.pt", weights_only=True)
        expected = export.project_logits(export.test.images)
        assert len(set(expected.argmax(1).tolist())) > 1, arch  # not a constant model: the check means something
        for what in ("weights", "archive"):
            assert torch.equal(out[what].argmax(1), expected.argmax(1)), (arch, what)
            torch.testing.assert_close(out[what], expected, rtol=1e-5, atol=1e-5)
        # batch size 1 takes other CPU kernels than a batch: equal within float tolerance
        torch.testing.assert_close(out["one"], expected[:1], rtol=1e-4, atol=1e-4)
        assert out["one"].argmax(1) == expected[:1].argmax(1)


def test_the_metadata_says_what_a_user_needs(export):
    meta = json.loads(export.files["metadata"].read_text())
    assert meta["classes"] == export.test.classes
    pre = meta["preprocessing"]
    assert (pre["resize_shorter_side"], pre["center_crop"], pre["interpolation"]) == (32, 32, "bilinear")
    assert pre["mean"] == pytest.approx(list(export.backbone.mean))
    assert pre["std"] == pytest.approx(list(export.backbone.std))
    assert meta["architecture"]["name"] == export.arch
    if export.arch.startswith("timm/"):
        assert meta["architecture"]["library"] == "timm" and "torchvision" not in meta["architecture"]
        timm_section = meta["architecture"]["timm"]
        assert {k: timm_section[k] for k in ("model_name", "num_classes", "kwargs", "python")} == {
            "model_name": "resnet10t", "num_classes": 4, "kwargs": {},
            "python": 'timm.create_model("resnet10t", num_classes=4)'}
        assert timm_section["pretrained_cfg"]["architecture"] == "resnet10t"  # timm's config of the architecture
        assert meta["versions"]["timm"] == importlib.metadata.version("timm")
    elif export.arch == "resnet10":
        assert meta["architecture"]["torchvision"]["python"] == (
            "torchvision.models.resnet.ResNet(torchvision.models.resnet.BasicBlock, [1, 1, 1, 1], num_classes=4)")
    else:
        assert meta["architecture"]["torchvision"]["python"] == f"torchvision.models.{export.arch}(num_classes=4)"
    runs = {r.seed: r for r in export.retrained.runs}
    best = max(runs.values(), key=lambda r: r.best_val_acc)
    assert meta["selection"]["seed"] == best.seed and meta["selection"]["rule"] == "best_val"
    assert set(meta["genome"]["learning_rates"]) == set(export.backbone.block_names)
    assert all(lr == pytest.approx(1e-3 * 10 ** (2 * (0.8 - 0.5))) for lr in meta["genome"]["learning_rates"].values())
    # the exported seed's test metrics are evaluate_on_test's for that seed
    row = export.test_metrics_per_seed.set_index("seed").loc[meta["selection"]["seed"]]
    for key in ("accuracy", "macro_accuracy", "macro_f1", "cohen_kappa"):
        assert meta["test_metrics"][key] == pytest.approx(row[key])
    assert meta["test_metrics"]["n_test_images"] == len(export.test.labels)
    assert meta["versions"]["torch"] == torch.__version__ and meta["versions"]["torchvision"]
    assert meta["export_check"]["archive"]["ok"] and meta["export_check"]["images"] == len(export.test.labels)
    lib = meta["architecture"]["library"]
    assert meta["export_check"][lib]["ok"] and meta["archive"]["written"]


def test_a_model_torch_export_cannot_capture_exports_its_weights_and_says_why(make_export, tmp_path, monkeypatch, caplog):
    """Where torch.export fails (here: made to fail), the run goes on: the weights and metadata are written, the
    archive file says why, the metadata too, and predict works from the weights."""
    pytest.importorskip("timm", reason="timm is not installed (pip install -e '.[timm]')")
    import evotune.export

    def no_capture(*args, **kwargs):
        raise RuntimeError("data-dependent control flow (test)\nmore lines")

    monkeypatch.setattr(evotune.export, "export_archive", no_capture)
    caplog.set_level(logging.WARNING)
    export = make_export(tmp_path, arch="timm/resnet10t", train=False)
    meta = json.loads(export.files["metadata"].read_text())
    reason = "torch.export could not capture the model: RuntimeError: data-dependent control flow (test)"
    assert meta["archive"] == {"written": False, "reason": reason,
                               "instead": "the safetensors weights (weights) load into the plain model"}
    assert "archive" not in meta["export_check"] and meta["export_check"]["timm"]["ok"]
    assert "no torch.export archive for timm/resnet10t" in caplog.text
    assert TorchExportDataset(filepath=str(export.files["archive"])).load() == ArchiveNotWritten(reason)
    assert export.files["archive"].read_text().startswith("evotune: no torch.export archive")
    with pytest.raises(Exception):  # noqa: B017 - torch's own error for a file that is not an archive
        torch.export.load(export.files["archive"])
    model = model_from_export(export.weights, export.metadata)
    with torch.no_grad():
        logits = model(Normalizer(export.backbone.mean, export.backbone.std, torch.device("cpu"),
                                  channels_last=False)(export.test.images))
    torch.testing.assert_close(logits, export.project_logits(export.test.images), rtol=1e-5, atol=1e-5)


def test_weights_of_another_export_are_refused(export):
    model = model_from_export(export.weights, export.metadata)
    assert not model.training
    other = {k: v.clone() for k, v in export.weights.items()}
    key = next(k for k, v in other.items() if v.is_floating_point())
    other[key] += 1
    with pytest.raises(ValueError, match="different exports"):
        model_from_export(other, export.metadata)


def _runs(*accs, diverged=()):
    runs = [TrainedRun(seed=10 + i, state_dict=None if i in diverged else {}, best_val_acc=a, best_epoch=1,
                       epochs_run=1, history=[], seconds=0.0, diverged=i in diverged) for i, a in enumerate(accs)]
    return TrainedVariant(method="biotune", variant="biotune", params={}, genome={}, block_lrs=[], trainable_params=1,
                          total_params=1, device="cpu", runs=runs, dataset="d", backbone_id="b", created="c")


def test_selection_rules():
    assert select_run(_runs(0.5, 0.9, 0.9), "best_val", None).seed == 11      # ties: the first
    assert select_run(_runs(0.5, 0.9, 0.7, diverged=(1,)), "best_val", None).seed == 12
    assert select_run(_runs(0.5, 0.9), "seed", 10).seed == 10
    with pytest.raises(ValueError, match="export.seed"):
        select_run(_runs(0.5, 0.9), "seed", 99)
    with pytest.raises(ValueError, match="diverged"):
        select_run(_runs(0.5, diverged=(0,)), "best_val", None)


@pytest.mark.parametrize("params, message", [
    ({"selection": "best_test", "seed": None, "verify_images": 1}, "export.selection"),
    ({"selection": "seed", "seed": None, "verify_images": 1}, "export.seed"),
    ({"selection": "best_val", "seed": None, "verify_images": -1}, "export.verify_images"),
    ({"selection": "best_val", "seed": None}, "Missing parameter.*export.verify_images"),
    ({"selection": "best_val", "seed": None, "verify_images": 1, "sed": 1}, "export.sed"),
    (None, "export must be a mapping"),
])
def test_bad_export_parameters_name_the_parameter(params, message):
    with pytest.raises(ParameterError, match=message):
        ExportParams.from_params(params)


@pytest.mark.slow
@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_every_architecture_exports_and_round_trips(arch, tmp_path):
    """torch.export of every registered architecture (random init, tiny input): the archive, saved and
    loaded by the catalog dataset, gives the staged model's logits; the safetensors state dict loads."""
    from evotune.backbones import (
        build_model,
        construct_from_description,
        get_arch,
        to_torchvision,
        torchvision_description,
        torchvision_state_dict,
    )
    from evotune.export import export_archive
    from evotune.io import SafetensorsDataset, TorchExportDataset
    from evotune.training import Normalizer

    torch.manual_seed(0)
    spec = get_arch(arch)
    size = {"inception_v3": 75, "vit_b_16": 224}.get(arch, 32)  # a ViT takes its own input size only
    model = build_model(arch, 3).eval()
    ds = TorchExportDataset(filepath=str(tmp_path / "m.pt2"))
    ds.save(export_archive(to_torchvision(model).eval(), spec.mean, spec.std, size))
    st = SafetensorsDataset(filepath=str(tmp_path / "m.safetensors"))
    st.save(torchvision_state_dict(model))
    x = torch.randint(0, 256, (3, 3, size, size), dtype=torch.uint8)
    norm = Normalizer(spec.mean, spec.std, torch.device("cpu"), channels_last=False)
    plain = construct_from_description(torchvision_description(model))
    plain.load_state_dict(st.load(), strict=True)
    with torch.no_grad():
        expected = model(norm(x))
        torch.testing.assert_close(ds.load().module()(x), expected, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(plain.eval()(norm(x)), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name, kwargs", [("vit_tiny_patch16_224", {"img_size": 32, "depth": 2}),
                                          ("convnext_atto", {})])
def test_timm_models_round_trip_with_their_create_model_options(name, kwargs, tmp_path):
    """A timm ViT variant (create_model options img_size, depth) and a ConvNeXt: the safetensors weights load into
    the model the metadata's description builds (timm.create_model with those options), the archive is captured,
    and both give the staged model's logits."""
    pytest.importorskip("timm", reason="timm is not installed (pip install -e '.[timm]')")
    from evotune.backbones.timm_models import build_timm, timm_from_description
    from evotune.export import plain_model, try_export_archive
    from evotune.io import SafetensorsDataset

    torch.manual_seed(0)
    model = build_timm(f"timm/{name}", 3, timm_kwargs=kwargs).eval()
    plain = plain_model(model)
    assert plain.library == "timm" and plain.description["kwargs"] == kwargs
    assert plain.description["python"] == f"timm.create_model({json.dumps(name)}, num_classes=3" + "".join(
        f", {k}={v!r}" for k, v in kwargs.items()) + ")"
    st = SafetensorsDataset(filepath=str(tmp_path / "m.safetensors"))
    st.save(plain.weights)
    rebuilt = timm_from_description(json.loads(json.dumps(plain.description)))  # as read back from the JSON
    rebuilt.load_state_dict(st.load(), strict=True)
    program = try_export_archive(plain.module.eval(), [0.5] * 3, [0.25] * 3, 32)
    assert isinstance(program, torch.export.ExportedProgram)
    ds = TorchExportDataset(filepath=str(tmp_path / "m.pt2"))
    ds.save(program)
    x = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    norm = Normalizer([0.5] * 3, [0.25] * 3, torch.device("cpu"), channels_last=False)
    with torch.no_grad():
        expected = model(norm(x))
        torch.testing.assert_close(rebuilt.eval()(norm(x)), expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ds.load().module()(x), expected, rtol=1e-4, atol=1e-4)
