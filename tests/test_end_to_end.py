"""`kedro run` end to end on a copy of the project, with tiny settings; then one stage alone."""

import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project

ROOT = Path(__file__).resolve().parents[1]

TINY = {
    "source_pretraining": {"data": {"n_per_class": 8}, "training": {"epochs": 1, "batch_size": 32}},
    "search": {"population": 3, "elite": 1, "generations": 1, "seeds": [1], "storage": "sqlite:///data/07_model_output/optuna.db"},
    "training": {"epochs": 1, "batch_size": 32},
    "retrain": {"seeds": [1, 2]},
}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    dst = tmp_path_factory.mktemp("project")
    for name in ("pyproject.toml", ".telemetry"):
        shutil.copy(ROOT / name, dst / name)
    (dst / "src").mkdir()  # the package itself is imported from the installed project
    shutil.copytree(ROOT / "conf", dst / "conf", ignore=shutil.ignore_patterns("local"))
    (dst / "conf" / "local").mkdir()
    for layer in (ROOT / "data").iterdir():
        if layer.is_dir():
            (dst / "data" / layer.name).mkdir(parents=True)
    old = os.getcwd()
    os.chdir(dst)  # catalog paths are relative to the working directory, as with `kedro run`
    yield dst
    os.chdir(old)


EXPORTS = ("07_model_output/exported_model.safetensors", "07_model_output/exported_model.pt2", "07_model_output/exported_model.json")


def run(project, **kw):
    bootstrap_project(project)
    with KedroSession.create(project_path=project, runtime_params=TINY) as session:
        return session.run(**kw)


def versions(project, rel):
    folder = project / "data" / rel
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_kedro_run_end_to_end_then_rerun_one_stage(project):
    run(project)
    report = (project / "data/08_reporting/latest/report.md").read_text()
    assert "Test accuracy" in report and "Best genome" in report
    for fig in ("fitness.png", "block_selection.png", "lr_multipliers.png", "confusion_matrix.png"):
        assert (project / "data/08_reporting/latest/figures" / fig).stat().st_size > 1000
    for rel in ("06_models/source_model.pt", "06_models/backbone.pt", "05_model_input/target_train.pt",
                "07_model_output/best_genome.json", "07_model_output/search_trials.csv",
                "08_reporting/test_metrics.json", *EXPORTS):
        assert len(versions(project, rel)) == 1, rel
    # the three files of one export share its version
    assert len({versions(project, rel)[0] for rel in EXPORTS}) == 1
    search_mtime = (project / "data/07_model_output/best_genome.json").stat().st_mtime

    # rerun only the retrain and what follows: the search is reused, nothing is overwritten
    run(project, from_nodes=["retrain_best_genome"])
    assert len(versions(project, "07_model_output/retrained_models.pt")) == 2
    assert len(versions(project, "08_reporting/test_metrics.json")) == 2
    assert all(len(versions(project, rel)) == 2 for rel in EXPORTS)
    assert len(versions(project, "07_model_output/best_genome.json")) == 1
    assert (project / "data/07_model_output/best_genome.json").stat().st_mtime == search_mtime

    # and only the reporting
    run(project, pipeline_names=["reporting"])
    assert len(versions(project, "08_reporting/report.md")) == 3
    assert len(versions(project, "07_model_output/retrained_models.pt")) == 2


def _latest(project, rel, name=None):
    return project / "data" / rel / versions(project, rel)[-1] / (name or Path(rel).name)


def _new_images_folder(project, root: Path) -> int:
    """Test images as PNGs plus a corrupt JPEG, a text file, a zero-byte PNG and a 16-bit PNG;
    returns the number of good test images written."""
    from PIL import Image

    test = torch.load(_latest(project, "05_model_input/target_test.pt"), weights_only=True)
    n = 20
    root.mkdir()
    for i in range(n):
        Image.fromarray(test["images"][i].permute(1, 2, 0).numpy(), "RGB").save(root / f"test_{i:02d}.png")
    Image.fromarray(np.arange(32 * 32, dtype=np.uint16).reshape(32, 32) * 60).save(root / "deep16.png")
    jpeg = io.BytesIO()
    Image.fromarray(test["images"][0].permute(1, 2, 0).numpy(), "RGB").save(jpeg, format="JPEG")
    (root / "corrupt.jpg").write_bytes(jpeg.getvalue()[:200])
    (root / "readme.txt").write_text("these are new images")
    (root / "empty.png").write_bytes(b"")
    return n


def test_predict_through_the_kedro_cli(project, tmp_path):
    """`kedro run --pipeline predict --params predict.source=...` in a subprocess, on the newest export."""
    if not versions(project, EXPORTS[0]):
        run(project)
    folder = tmp_path / "new images"
    n = _new_images_folder(project, folder)
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "1", "DO_NOT_TRACK": "1"}
    kedro = Path(sys.executable).parent / "kedro"
    proc = subprocess.run(
        [str(kedro), "run", "--pipeline", "predict", "--params", f"predict.source={folder},predict.device=cpu"],
        cwd=project, env=env, capture_output=True, text=True, timeout=600,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "skipped 3 (1 empty file, 1 not an image, 1 unreadable image" in " ".join(out.split()), out[-3000:]
    for name in ("corrupt.jpg", "readme.txt", "empty.png"):
        assert name in out

    pred = pd.read_csv(_latest(project, "07_model_output/predictions.csv"))
    skipped = pd.read_csv(_latest(project, "07_model_output/prediction_skipped.csv"))
    assert sorted(skipped["file"]) == ["corrupt.jpg", "empty.png", "readme.txt"]
    assert len(pred) == n + 1 and "deep16.png" in set(pred["file"])

    # the same classes as the trained model of the exported seed on those test images
    from evotune.backbones import model_from_checkpoint
    from evotune.training import Normalizer

    meta = pd.read_json(_latest(project, EXPORTS[2]), typ="series")
    backbone = torch.load(_latest(project, "06_models/backbone.pt"), weights_only=True)
    retrained = torch.load(_latest(project, "07_model_output/retrained_models.pt"), weights_only=True)
    test = torch.load(_latest(project, "05_model_input/target_test.pt"), weights_only=True)
    model = model_from_checkpoint(backbone)
    model.load_state_dict(next(r["state_dict"] for r in retrained["runs"] if r["seed"] == meta["selection"]["seed"]))
    model.eval()
    with torch.no_grad():
        logits = model(Normalizer(backbone["mean"], backbone["std"], torch.device("cpu"), False)(test["images"][:n]))
    by_file = pred.set_index("file")["predicted_class"].astype(str)
    assert [by_file[f"test_{i:02d}.png"] for i in range(n)] == [test["classes"][int(k)] for k in logits.argmax(1)]


def test_predict_reads_a_chosen_export_version(project, tmp_path):
    from evotune.validation import ParameterError

    if not versions(project, EXPORTS[0]):
        run(project)
    folder = tmp_path / "imgs"
    _new_images_folder(project, folder)
    oldest = versions(project, EXPORTS[0])[0]
    before = len(versions(project, "07_model_output/predictions.csv"))
    params = {"predict": {"source": str(folder), "device": "cpu", "model_version": oldest}}
    bootstrap_project(project)
    with KedroSession.create(project_path=project, runtime_params=params) as session:
        session.run(pipeline_names=["predict"])
    assert len(versions(project, "07_model_output/predictions.csv")) == before + 1

    params["predict"]["model_version"] = "2000-01-01T00.00.00.000Z"
    with pytest.raises(ParameterError, match=f"no export 2000-01-01T00.00.00.000Z.*{oldest}"):
        with KedroSession.create(project_path=project, runtime_params=params) as session:
            session.run(pipeline_names=["predict"])
