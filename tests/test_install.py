"""What pyproject.toml declares matches what the project needs: the Python floor is what the pinned versions
(constraints.txt) need, ruff checks for that Python, and every package the code imports is declared."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
#: Python minor versions a floor may be
MINORS = [f"3.{m}" for m in range(8, 16)]
#: top-level module -> distribution, where the two names differ (and the distribution may not be installed here)
MODULE_DIST = {"PIL": "pillow", "sklearn": "scikit-learn", "yaml": "pyyaml"}


def pins() -> dict[str, str]:
    out = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.strip().split("==")
            out[canonicalize_name(name)] = version
    return out


def declared(*extras: str) -> set[str]:
    reqs = list(PYPROJECT["project"]["dependencies"])
    for extra in extras:
        reqs += PYPROJECT["project"]["optional-dependencies"][extra]
    return {canonicalize_name(Requirement(r).name) for r in reqs}


def test_the_python_floor_is_what_the_pinned_versions_need():
    needs = {}
    for name in pins():  # as installed: the pinned versions, or after `make upgrade` the newer ones it pins next
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue  # not installed here (another platform's package)
        if not dist.metadata.get("Requires-Python"):
            continue
        spec = SpecifierSet(dist.metadata["Requires-Python"])
        needs[name] = next(v for v in MINORS if f"{v}.99" in spec)  # a release of that minor fits (>=3.11.5: 3.11)
    assert needs, "none of the pinned packages is installed"
    floor = max(needs.values(), key=lambda v: int(v.split(".")[1]))
    assert PYPROJECT["project"]["requires-python"] == f">={floor}", (
        f"the pins need Python {floor} ({', '.join(sorted(n for n, v in needs.items() if v == floor))})")
    assert PYPROJECT["tool"]["ruff"]["target-version"] == "py" + floor.replace(".", "")
    assert sys.version_info >= tuple(int(p) for p in floor.split("."))


def imports(*folders: str) -> dict[str, str]:
    """Top-level third-party modules imported by the .py files under ``folders``: {module: one file}."""
    found: dict[str, str] = {}
    for folder in folders:
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                         else [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module
                         else [])
                for name in names:
                    top = name.split(".")[0]
                    if top not in sys.stdlib_module_names and top != "evotune":
                        found.setdefault(top, str(path.relative_to(ROOT)))
    return found


def _dist(module: str) -> str:
    return canonicalize_name(MODULE_DIST.get(module, module))


def test_every_package_the_code_imports_is_declared():
    """src/ and scripts/: the runtime or an optional extra (timm, mlflow); tests/: those and the test extra."""
    runtime = declared("timm", "mlflow")
    missing = {m: f for m, f in imports("src", "scripts").items() if _dist(m) not in runtime}
    assert not missing, f"imported but not declared in pyproject.toml's dependencies: {missing}"
    local = {p.stem for p in (ROOT / "tests").glob("*.py")}
    missing = {m: f for m, f in imports("tests").items() if m not in local and _dist(m) not in runtime | declared("test")}
    assert not missing, f"imported by the tests but not declared (test extra): {missing}"


def test_every_declared_package_has_an_upper_bound_and_a_pin():
    pinned = pins()
    groups = PYPROJECT["project"]["optional-dependencies"]
    for req in PYPROJECT["project"]["dependencies"] + groups["test"] + groups["timm"]:
        r = Requirement(req)
        assert any(s.operator in ("<", "<=", "==", "~=") for s in r.specifier), f"{req}: no upper bound"
        name = canonicalize_name(r.name)
        assert name in pinned and r.specifier.contains(pinned[name], prereleases=True), f"{req}: pin {pinned.get(name)}"


def test_make_run_installs_the_runtime_and_make_test_the_test_extras():
    make = (ROOT / "Makefile").read_text()
    rules = dict(re.findall(r"^(\$\(\w+\)|\w[\w-]*):[^\n]*\n((?:\t[^\n]*\n)+)", make, flags=re.M))
    assert re.search(r"^run: \$\(RUN_STAMP\)$", make, re.M) and re.search(r"^test: \$\(STAMP\)$", make, re.M)
    assert re.search(r'-c constraints\.txt -e \.\n', rules["$(RUN_STAMP)"])
    assert '-e ".[test,timm]"' in rules["$(STAMP)"] and "touch $(STAMP) $(RUN_STAMP)" in rules["$(STAMP)"]
