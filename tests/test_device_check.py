"""The GPU check's pieces that run without a GPU (issue 16): version bounds, the wheel list,
the extrapolation of the paper's search, and the shell script's syntax."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version
from test_scripts import load_script

tomllib = pytest.importorskip("tomllib", reason="Python 3.11+ (tomllib) reads pyproject.toml here")
ROOT = Path(__file__).resolve().parents[1]
#: what the lent GPU machine has preinstalled (README, "Checking a GPU machine")
DEVICE = {"torch": "2.11.0", "torchvision": "0.26.0", "numpy": "2.5.0"}


def project_requirements() -> dict[str, Requirement]:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return {Requirement(d).name: Requirement(d) for d in deps}


def test_the_gpu_machines_torch_and_torchvision_satisfy_the_project_bounds():
    reqs = project_requirements()
    for name in ("torch", "torchvision"):
        assert reqs[name].specifier.contains(Version(DEVICE[name])), (name, str(reqs[name]), DEVICE[name])


def wheel_pins() -> dict[str, str]:
    text = (ROOT / "scripts" / "fetch_device_wheels.sh").read_text()
    return {m.group(1).lower(): m.group(2) for m in re.finditer(r"^\s+([A-Za-z0-9_.-]+)==([0-9][^\s#]*)", text, re.M)}


def test_device_wheels_satisfy_the_project_and_leave_the_machines_torch_alone():
    pins = wheel_pins()
    assert {"kedro", "kedro-datasets", "optuna", "sqlalchemy", "alembic", "omegaconf"} <= set(pins)
    assert not {"torch", "torchvision", "numpy", "pandas", "kedro-viz"} & set(pins)
    reqs = project_requirements()
    for name in ("kedro", "kedro-datasets", "optuna"):
        assert reqs[name].specifier.contains(Version(pins[name])), (name, pins[name])


def bench_json(tmp_path, partial=False) -> Path:
    rows, evals = [], []
    # benchmark: 1,000 train / 500 val images, 2 epochs; fast: 4 s per evaluation, of which 0.5 s per validation pass
    for g, s_fast, vp in (("head", 1.0, 0.1), ("mixed", 4.0, 0.5), ("all", 6.0, 0.5)):
        rows.append({"genome": g, "path": "fast", "evaluations": 3, "epochs_mean": 2.0, "s_per_eval": s_fast,
                     "train_images_per_s": 2000 / s_fast, "speedup_evals_per_hour": 10 / s_fast,
                     "speedup_images_per_s": 10 / s_fast})
        rows.append({"genome": g, "path": "naive", "evaluations": 1, "epochs_mean": 2.0, "s_per_eval": 10.0,
                     "train_images_per_s": 200.0})
        evals.append({"genome": g, "path": "fast", "val_pass_s": vp})
    result = {"machine": {"gpu": "Test GPU"}, "partial": partial,
              "settings": {"preset": "flowers", "n_train_images": 1000, "n_val_images": 500, "epochs": 2,
                           "fast_one_off_s": {"decode_resize_upload": 3.0}},
              "table": rows, "evaluations": evals}
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(result))
    return path


def test_extrapolation_of_the_paper_search(tmp_path):
    ex_mod = load_script("extrapolate_search.py")
    path = bench_json(tmp_path)
    ex = ex_mod.extrapolate(json.loads(path.read_text()), epochs=10, overhead_s=0.05)
    assert ex["paper_search"]["evaluations"] == 140 and ex["paper_search"]["trainings"] == 420
    mixed = ex["genomes"]["mixed"]
    # per epoch: 2 s - 0.5 s validation = 1.5 s training for 1,000 images; paper: 510 train, 510 val
    assert mixed["bench_train_s_per_epoch"] == pytest.approx(1.5)
    assert mixed["train_images_per_s"] == pytest.approx(1000 / 1.5)
    per_epoch = 1.5 * 510 / 1000 + 0.5 * 510 / 500
    assert mixed["paper_s_per_training"] == pytest.approx(10 * per_epoch)
    fixed = 3.0 * 2040 / 1500 + 0.05 * 420
    assert mixed["search_s"] == pytest.approx(420 * 10 * per_epoch + fixed)
    assert mixed["search_min_worst_case_30_epochs"] == pytest.approx((420 * 30 * per_epoch + fixed) / 60)
    assert ex["genomes"]["all"]["search_s"] > mixed["search_s"] > ex["genomes"]["head"]["search_s"]
    # the script: a table on stdout and the JSON
    out = tmp_path / "ex.json"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "extrapolate_search.py"), str(bench_json(tmp_path, True)),
                           "--out", str(out)], capture_output=True, text=True, check=True)
    assert "420 trainings" in proc.stdout and "partial" in proc.stdout
    assert json.loads(out.read_text())["benchmark_partial"] is True


def test_device_check_script_is_valid_bash():
    for name in ("device_check.sh", "fetch_device_wheels.sh"):
        subprocess.run(["bash", "-n", str(ROOT / "scripts" / name)], check=True)
