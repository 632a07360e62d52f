"""The suite passes on the machines users have: with weights in their torch hub cache, with their own
conf/local, and whatever their tests do to torch's global state (issue 28).

The in-process checks are in the fast tier; the proof runs the conf-reading tests and an offline CLI command
in a copy of the project (its own ``tests/``) whose conf/local points at another dataset and whose user
environment holds ResNet-50 "weights" (a file the old tests would have loaded), as a subprocess: integration tier.
(A machine with a GPU is checked by scripts/device_check.sh, which runs the fast tier there.)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

#: a user's own conf/local (the kind README tells them to write): another dataset, ImageNet weights, other sizes
USER_LOCAL = textwrap.dedent("""\
    data:
      source: {kind: image_folder, path: data/01_raw/somebody_elses_images}
    backbone: {arch: resnet50, weights: imagenet}
    search: {population: 6}
    compare: {resamplings: 5}
""")

#: the tests that read conf/ or the weights cache (issue 28's list), and the offline CLI command
CHECKS = ["tests/test_validation.py", "tests/test_compare.py::test_catalog_factories_version_every_compare_output",
          "tests/test_paper_env.py", "tests/test_timm.py::test_a_timm_run_is_checked_before_it_starts",
          "tests/test_project.py", "tests/test_cli.py::test_documented_command[kedro run --pipelines pretrained]"]


def test_the_weights_caches_are_the_sessions_own(isolated_caches, tmp_path_factory):
    base = tmp_path_factory.getbasetemp()
    for name in ("TORCH_HOME", "HF_HOME"):
        assert Path(os.environ[name]) == isolated_caches[name] and base in Path(os.environ[name]).parents
    assert Path(torch.hub.get_dir()).parent == isolated_caches["TORCH_HOME"]
    assert not any(isolated_caches["TORCH_HOME"].rglob("*.pth"))


def test_the_conf_the_tests_read_has_an_empty_conf_local(conf_dir):
    assert conf_dir.parent != ROOT and (conf_dir / "base").is_dir()
    assert not any((conf_dir / "local").iterdir())


def user_machine(tmp: Path, tests: Path) -> tuple[Path, dict]:
    """A copy of the project with ``tests`` as its tests, a user's conf/local, and a user environment whose torch
    hub cache holds a file named as torchvision's ResNet-50 weights (not loadable: a test that read it fails)."""
    project = tmp / "clone"
    project.mkdir()
    for name in ("pyproject.toml", ".telemetry", "Makefile", "constraints.txt", "constraints-mlflow.txt", "README.md"):
        shutil.copy2(ROOT / name, project / name)
    for name in ("conf", "scripts", "docs"):
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, project / name, ignore=shutil.ignore_patterns("local"))
    shutil.copytree(tests, project / "tests", ignore=shutil.ignore_patterns("__pycache__"))
    (project / "conf" / "local").mkdir()
    (project / "conf" / "local" / "parameters.yml").write_text(USER_LOCAL)
    for layer in ("01_raw", "02_intermediate", "03_primary", "05_model_input", "06_models", "07_model_output",
                  "08_reporting"):
        (project / "data" / layer).mkdir(parents=True)
    (project / ".venv").symlink_to(Path(sys.prefix))
    torch_home = tmp / "user_torch"
    (torch_home / "hub" / "checkpoints").mkdir(parents=True)
    (torch_home / "hub" / "checkpoints" / "resnet50-11ad3fa6.pth").write_bytes(b"not really weights")
    env = {**os.environ, "TORCH_HOME": str(torch_home), "HF_HOME": str(tmp / "user_hf"), "PYTHONDONTWRITEBYTECODE": "1"}
    return project, env


def run_checks(project: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "", "-x",
                           "-o", "addopts=", *CHECKS], cwd=project, env=env, capture_output=True, text=True, timeout=1200)


@pytest.mark.integration
def test_the_suite_passes_with_a_users_conf_local_and_cached_weights(tmp_path):
    project, env = user_machine(tmp_path, ROOT / "tests")
    proc = run_checks(project, env)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    assert " passed" in proc.stdout and " failed" not in proc.stdout


@pytest.mark.integration
def test_a_module_that_changes_torchs_threads_at_import_stops_the_run(tmp_path):
    project, env = user_machine(tmp_path, ROOT / "tests")
    (project / "tests" / "test_sets_threads.py").write_text(
        "import torch\n\ntorch.set_num_threads(max(1, torch.get_num_threads() - 1) if torch.get_num_threads() > 1 "
        "else 2)\n\n\ndef test_nothing():\n    pass\n")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
                           "tests/test_sets_threads.py"], cwd=project, env=env, capture_output=True, text=True,
                          timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "changed torch's global state at import" in out, out[-3000:]
