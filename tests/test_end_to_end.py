"""`kedro run` end to end on a copy of the project, with tiny settings; then one stage alone."""

import os
import shutil
from pathlib import Path

import pytest
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

