"""The documentation: README stays short, the references cover conf/base, the site builds.

The site (mkdocs.yml, docs/) is built with warnings as errors: a broken link or anchor, a page left
out of the nav or a nav entry without its page fails. The parameters reference
(docs/reference/parameters.md) is generated from the comments of conf/base/parameters*.yml by
scripts/parameters_reference.py; it must name every key, with its default and meaning, and be what
the script writes from today's files. So must the data catalog's (docs/reference/catalog.md).
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "reference" / "parameters.md"


def _reference_module():
    spec = importlib.util.spec_from_file_location("parameters_reference", ROOT / "scripts" / "parameters_reference.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


ref = _reference_module()


def test_readme_is_a_short_entry_point():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines: move the detail to a page of docs/"


@pytest.mark.parametrize("path", ref.parameter_files(ROOT), ids=lambda p: p.name)
def test_parameters_reference_names_every_key_with_default_and_meaning(path):
    """Every leaf key of the file has a row in the page, with its default and a meaning."""
    rows = {}
    for line in PAGE.read_text().splitlines():
        m = re.match(r"\| `([^`]+)` \| (.*?) \| (.*) \|$", line)
        if m:
            rows[m[1]] = (m[2], m[3])
    keys = ref.leaf_keys(yaml.safe_load(path.read_text()))
    missing = [k for k in keys if k not in rows]
    assert not missing, (f"{PAGE.relative_to(ROOT)} lacks {missing} of {path.name}: "
                         "run python scripts/parameters_reference.py")
    no_default = [k for k in keys if not rows[k][0]]
    assert not no_default, f"no default for {no_default} in {PAGE.relative_to(ROOT)}"
    if path.name == "mlflow.yml":  # kedro-mlflow's own keys, documented by kedro-mlflow
        return
    no_meaning = [k for k in keys if not rows[k][1].strip()]
    assert not no_meaning, (f"{path.name}: give {no_meaning} a comment (on the key's line or the lines "
                            "directly above it), then run python scripts/parameters_reference.py")


@pytest.mark.parametrize("path", ref.catalog_files(ROOT), ids=lambda p: p.name)
def test_catalog_reference_names_every_dataset(path):
    page = (ROOT / "docs" / "reference" / "catalog.md").read_text()
    names = [n for n in yaml.safe_load(path.read_text()) if not n.startswith("_")]
    missing = [n for n in names if f"| `{n}` |" not in page]
    assert not missing, f"docs/reference/catalog.md lacks {missing} of {path.name}: run python scripts/parameters_reference.py"


def test_parameters_reference_is_what_the_script_writes():
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "parameters_reference.py"), "--check"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_reference_entries_read_the_comments(tmp_path):
    """The parser of the reference: inline comments, the block above a key, a comment continued on
    the lines below (aligned), list items, a group's comment, flow values, '#' inside quotes, an empty
    mapping without a comment."""
    f = tmp_path / "parameters_x.yml"
    f.write_text(
        "# A file comment.\n"
        "\n"
        "# The group.\n"
        "x:\n"
        "  a: 1          # inline\n"
        "                # continued\n"
        "  # above b\n"
        "  b: [1, 2]     # a list\n"
        "  c: {}\n"
        "  # mode:\n"
        "  #   fast  - quick\n"
        "  #   slow  - careful,\n"
        "  #           and slow\n"
        "  mode: fast\n"
        "  name: 'a # b'  # quoted\n"
        "  nested:\n"
        "    d: ${x.a}    # interpolated\n"
    )
    got = {e.key: (e.default, e.meaning) for e in ref.entries(f)}
    assert got == {
        "x": ("", "The group."),
        "x.a": ("1", "inline continued"),
        "x.b": ("[1, 2]", "above b a list"),
        "x.c": ("{}", "(no options)"),
        "x.mode": ("fast", "mode:<br>fast  - quick<br>slow  - careful, and slow"),
        "x.name": ("'a # b'", "quoted"),
        "x.nested.d": ("${x.a}", "interpolated"),
    }
    assert ref.leaf_keys(yaml.safe_load(f.read_text())) == ["x.a", "x.b", "x.c", "x.mode", "x.name", "x.nested.d"]
    page = ref.render(_project_with(tmp_path, f))
    assert "A file comment." in page and "| `x.a` | `1` | inline continued |" in page


def _project_with(tmp_path: Path, f: Path) -> Path:
    root = tmp_path / "project"
    (root / "conf" / "base").mkdir(parents=True)
    (root / "conf" / "base" / f.name).write_text(f.read_text())
    return root


@pytest.mark.skipif(importlib.util.find_spec("mkdocs") is None,
                    reason='the docs extra is not installed (pip install -c constraints.txt -e ".[docs]"; '
                           "`make docs` installs it and builds the site)")
def test_the_site_builds_with_warnings_as_errors(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, NO_MKDOCS_2_WARNING="1"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (tmp_path / "site" / "reference" / "parameters" / "index.html").is_file()
