"""The paper's sweep (evotune.sweep): its settings, its pre-run check of every setting, its table beside the
paper's numbers. The sweep run through the CLI (two tiny settings, resumed): tests/test_cli.py."""

from pathlib import Path

import pandas as pd
import pytest

from evotune.sweep import PAPER_ACCURACY, Setting, SweepError, check_settings, parse_settings, sweep_table, table_markdown

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ["flowers102", "dtd", "svhn"]
ARCHS = ["resnet50", "vgg19"]


def test_settings_default_to_every_dataset_and_arch_and_bad_ones_are_named():
    assert parse_settings("all", DATASETS, ARCHS) == [Setting(d, a) for d in DATASETS for a in ARCHS]
    assert parse_settings("dtd:vgg19, flowers102:resnet50,dtd:vgg19", DATASETS, ARCHS) == [
        Setting("dtd", "vgg19"), Setting("flowers102", "resnet50")]
    with pytest.raises(SweepError) as err:
        parse_settings("dtd:vgg19,imagenet:resnet50,dtd", DATASETS, ARCHS)
    assert "'imagenet:resnet50', 'dtd'" in str(err.value) and "svhn" in str(err.value)


def test_every_setting_is_checked_before_anything_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no data here; conftest switches the machine offline
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    settings = [Setting("dtd", "vgg19"), Setting("svhn", "resnet50")]
    found = check_settings(settings, project=ROOT, env="paper", out=tmp_path / "sweep", extra={})
    assert list(found) == ["dtd-vgg19", "svhn-resnet50"]
    assert any("vgg19-dcbb9e9d.pth" in p for p in found["dtd-vgg19"])
    assert any("train_32x32.mat" in p and "cannot download" in p for p in found["svhn-resnet50"])
    assert check_settings(settings, project=ROOT, env="paper", out=tmp_path / "sweep",
                          extra={"backbone": {"weights": "none"}, "paper": {"datasets": {
                              "dtd": {"kind": "image_folder", "path": "x"},
                              "svhn": {"kind": "image_folder", "path": "x"}}}}) == {}


def comparison(folder: Path, version: str, rows: list[dict]) -> None:
    path = folder / "08_reporting" / "compare" / "comparison.parquet" / version / "comparison.parquet"
    path.parent.mkdir(parents=True)
    pd.DataFrame([{"kind": "method", "trainable_pct": 100.0, "trainings": 3, "wall_seconds": 12.0, **r}
                  for r in rows]).to_parquet(path)


def test_the_table_puts_each_setting_beside_the_papers_numbers(tmp_path):
    out = tmp_path / "sweep"
    comparison(out / "flowers102-resnet50", "2026-12-01T10.00.00.000Z",
               [{"method": "biotune", "accuracy_mean": 0.5, "macro_accuracy_mean": 0.5}])  # an older comparison
    comparison(out / "flowers102-resnet50", "2026-12-02T10.00.00.000Z", [
        {"method": "biotune", "accuracy_mean": 0.9, "macro_accuracy_mean": 0.88, "trainable_pct": 99.0},
        {"method": "full_finetune", "accuracy_mean": 0.86, "macro_accuracy_mean": 0.85},
        {"method": "tpe", "accuracy_mean": 0.87, "macro_accuracy_mean": 0.86}])
    comparison(out / "dtd-vgg19", "2026-12-02T11.00.00.000Z",
               [{"method": "biotune", "accuracy_mean": 0.7, "macro_accuracy_mean": 0.69}])
    settings = [Setting("flowers102", "resnet50"), Setting("dtd", "vgg19"), Setting("svhn", "resnet50")]
    table = sweep_table(settings, out).set_index(["dataset", "arch", "method"])
    assert len(table) == 4  # the newest comparison of each setting; svhn has none yet
    row = table.loc[("flowers102", "resnet50", "biotune")]
    assert (row["test_accuracy_pct"], row["test_macro_accuracy_pct"], row["trainable_pct"]) == (90.0, 88.0, 99.0)
    assert row["paper_test_accuracy_pct"] == PAPER_ACCURACY[("flowers102", "resnet50")]["biotune"] == 91.68
    assert row["diff_to_paper_pp"] == pytest.approx(-1.68)
    assert table.loc[("flowers102", "resnet50", "full_finetune")]["diff_to_paper_pp"] == pytest.approx(0.67)
    assert pd.isna(table.loc[("flowers102", "resnet50", "tpe")]["paper_test_accuracy_pct"])  # the paper has none
    assert pd.isna(table.loc[("dtd", "vgg19", "biotune")]["paper_test_accuracy_pct"])  # ResNet-50 only in the paper
    md = table_markdown(table.reset_index(), ["svhn-resnet50"])
    assert "| flowers102 | resnet50 | biotune | 88.00 | 90.00 | 99.00 | 3 | 12.0 | 91.68 | -1.68 |" in md
    assert "| dtd | vgg19 | biotune | 69.00 | 70.00 | 100.00 | 3 | 12.0 | — | — |" in md
    assert "Not finished yet (no comparison): svhn-resnet50." in md


def test_every_output_of_the_catalog_lives_under_output_dir():
    """A setting's folder holds all its outputs: no catalog entry writes beside it (a new entry must use
    ${runtime_params:output_dir,data} like the others)."""
    from evotune.config import ProjectConfigLoader

    for env, runtime, root in (("base", {}, "data/"), ("paper", {"output_dir": "data/sweep/dtd-vgg19"},
                                                         "data/sweep/dtd-vgg19/")):
        catalog = ProjectConfigLoader(str(ROOT / "conf"), base_env="base", default_run_env=env,
                                      runtime_params=runtime)["catalog"]
        paths = {name: cfg.get("filepath") or cfg.get("path") for name, cfg in catalog.items()
                 if isinstance(cfg, dict) and (cfg.get("filepath") or cfg.get("path"))}
        assert len(paths) > 40
        outside = {n: p for n, p in paths.items() if not str(p).startswith(root)}
        assert not outside, f"outside {root}: {outside}"
