"""The project uses its libraries' public API only (no private attribute or module of Optuna, Kedro,
torch, timm or any other): a private name (``_x``) is read only where the project itself defines it."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "evotune"


#: Kedro's documented extension points of ``AbstractVersionedDataset`` for a custom dataset (docs: "Create
#: a custom dataset": ``load`` reads ``self._get_load_path()``, ``save`` writes ``self._get_save_path()``,
#: ``self._filepath`` is the path it was given): protected for subclasses, not private
KEDRO_DATASET_HOOKS = {"_get_load_path", "_get_save_path", "_filepath"}


def _trees() -> dict[Path, ast.Module]:
    return {p: ast.parse(p.read_text(), filename=str(p)) for p in sorted(SRC.rglob("*.py"))}


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def own_private_names(trees: dict[Path, ast.Module]) -> set[str]:
    """The private names the project defines: functions, classes, module and instance attributes."""
    out: set[str] = set()
    for tree in trees.values():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                out.add(node.name)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                out.add(node.id)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                out.add(node.attr)
            elif isinstance(node, ast.alias) and node.asname:
                out.add(node.asname)
    return {n for n in out if _private(n)}


def private_uses(trees: dict[Path, ast.Module]) -> list[str]:
    own = own_private_names(trees) | KEDRO_DATASET_HOOKS
    found = []
    for path, tree in trees.items():
        where = path.relative_to(SRC.parent)
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and _private(node.attr) and node.attr not in own:
                found.append(f"{where}:{node.lineno}: .{node.attr}")
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                parts = node.module.split(".")
                bad = [p for p in parts if _private(p)] + [a.name for a in node.names if _private(a.name)]
                if bad:
                    found.append(f"{where}:{node.lineno}: from {node.module} import {bad}")
            elif isinstance(node, ast.Import):
                found += [f"{where}:{node.lineno}: import {a.name}" for a in node.names
                          if any(_private(p) for p in a.name.split("."))]
    return found


def test_no_private_api_of_any_library():
    assert private_uses(_trees()) == []


def test_the_check_finds_a_private_attribute_and_module(tmp_path):
    """The check itself: the kinds of use it exists for are found (what the search and timm code had)."""
    code = ("import optuna\nfrom timm.models._manipulate import group_with_matcher\n"
            "def f(study, t):\n    study._storage.set_trial_state_values(t._trial_id, None)\n"
            "class A:\n    def __init__(self):\n        self._mine = 1\n    def g(self):\n        return self._mine\n")
    found = private_uses({SRC / "example.py": ast.parse(code)})
    assert sorted(f.split(": ", 1)[1] for f in found) == [
        "._storage", "._trial_id", "from timm.models._manipulate import ['_manipulate']"]
