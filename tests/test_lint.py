"""The code passes ruff with the project's configuration (pyproject.toml, [tool.ruff])."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_passes():
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    assert ruff, "ruff is not installed: it is part of the test extra (pip install -e '.[test]')"
    proc = subprocess.run([ruff, "check", "src", "tests", "scripts"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_no_test_module_imports_from_conftest():  # the tests request its fixtures instead
    assert not [p.name for p in (ROOT / "tests").glob("*.py") if re.search(r"^\s*(from|import)\s+conftest\b", p.read_text(), re.M)]
