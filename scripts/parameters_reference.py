"""Write docs/reference/parameters.md and catalog.md from the comments of conf/base/*.yml.

parameters.md: every key of conf/base/parameters*.yml (and of mlflow.yml, kedro-mlflow's
configuration), its default and its meaning. catalog.md: every dataset of conf/base/catalog*.yml,
its type, file and layer, and its comment.

The meaning is the key's own comment in the YAML file: the comment on its line, after the comment
lines directly above it (a block of comment lines before a key belongs to that key). The parameter
files stay the one place where a parameter is explained; this page is generated from them, and
tests/test_docs.py fails when it is out of date (a key added, removed or recommented without rerunning
this script from the repository root).

    python scripts/parameters_reference.py            # rewrite the page
    python scripts/parameters_reference.py --check    # exit 1 if the page is out of date
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PAGE = Path("docs/reference/parameters.md")
CATALOG_PAGE = Path("docs/reference/catalog.md")

KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z_][\w.-]*):(?P<rest>.*)$")


@dataclass
class Entry:
    key: str  # dotted path
    default: str  # the value as written in the file (a mapping's value: its flow form)
    meaning: str


def _split_comment(rest: str) -> tuple[str, str]:
    """``value  # comment`` -> (value, comment); a ``#`` inside quotes or brackets is not a comment."""
    depth, quote = 0, None
    for i, ch in enumerate(rest):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "#" and depth == 0 and (i == 0 or rest[i - 1] in " \t"):
            return rest[:i].strip(), rest[i + 1:].strip()
    return rest.strip(), ""


def entries(path: Path) -> list[Entry]:
    """The leaf keys of one parameter file, in file order, with default and comment.

    A key whose value is written on its own line (a scalar, a flow list or mapping) is a leaf; a key
    followed by an indented block is a group, and its comment is kept as the group's meaning (a
    row of its own when it has one)."""
    lines = path.read_text().splitlines()
    out: list[Entry] = []
    stack: list[tuple[int, str]] = []  # (indent, key) of the open groups
    above: list[str] = []  # comment lines directly above the current line
    inline_col = -1  # column of the last key's comment on its own line, while comment lines continue it
    for i, line in enumerate(lines):
        stripped = line.strip()
        if not stripped:
            above, inline_col = [], -1
            continue
        if _ruler(stripped):
            above, inline_col = [], -1
            continue
        if stripped.startswith("#"):
            if line.index("#") == inline_col and out:  # aligned under the last key's comment: it goes on
                out[-1].meaning = _join([out[-1].meaning, _comment_text(stripped)])
            else:
                inline_col = -1
                above.append(_comment_text(stripped))
            continue
        inline_col = -1
        m = KEY.match(line)
        if not m:  # a continuation line (a flow mapping over several lines): part of the last entry
            above = []
            if out:
                value, comment = _split_comment(stripped)
                out[-1].default += " " + value
                out[-1].meaning = _join([out[-1].meaning, comment.replace("<", "&lt;")])
            continue
        indent = len(m["indent"])
        while stack and stack[-1][0] >= indent:
            stack.pop()
        value, comment = _split_comment(m["rest"])
        if comment:
            inline_col = line.rindex("#" + m["rest"].split("#", 1)[1]) if "#" in m["rest"] else -1
        dotted = ".".join([k for _, k in stack] + [m["key"]])
        meaning = _join([*above, comment.replace("<", "&lt;")])
        above = []
        nxt = next((ln for ln in lines[i + 1:] if ln.strip() and not ln.strip().startswith("#")), "")
        opens_block = not value and len(nxt) - len(nxt.lstrip()) > indent
        if opens_block:
            stack.append((indent, m["key"]))
            if meaning:
                out.append(Entry(dotted, "", meaning))
        else:
            if not meaning and value == "{}":  # an empty mapping: a method or group without options
                meaning = "(no options)"
            out.append(Entry(dotted, value, meaning))
    return out


def _ruler(line: str) -> bool:
    """A section heading of a file (``# --- search ----``), nobody's comment."""
    return line.strip().lstrip("#").strip().startswith("---")


def _comment_text(stripped: str) -> str:
    """A comment line's text. A line indented by 2 to 4 spaces (``#   eval  - ...``) is an item of a
    list and starts a new line; one indented further continues the item above it."""
    text = stripped[1:]
    indent = len(text) - len(text.lstrip())
    text = text.strip().replace("<", "&lt;")
    return ("<br>" + text) if 2 <= indent - 1 <= 3 else text


def _join(parts: list[str]) -> str:
    out = ""
    for part in filter(None, parts):
        out += part if (not out or part.startswith("<br>")) else " " + part
    return out.removeprefix("<br>")


def leaf_keys(data: object, prefix: str = "") -> list[str]:
    """Every dotted leaf key of a loaded YAML mapping (an empty mapping is a leaf)."""
    if isinstance(data, dict) and data:
        return [k for key, value in data.items() for k in leaf_keys(value, f"{prefix}{key}.")]
    return [prefix.rstrip(".")]


def parameter_files(root: Path = ROOT) -> list[Path]:
    """The files whose keys the parameters page lists: parameters*.yml, then mlflow.yml."""
    base = root / "conf" / "base"
    return sorted(base.glob("parameters*.yml")) + sorted(base.glob("mlflow.yml"))


def catalog_files(root: Path = ROOT) -> list[Path]:
    return sorted((root / "conf" / "base").glob("catalog*.yml"))


TOP_KEY = re.compile(r"""^(?P<q>["']?)(?P<key>[^\s#'"][^'"]*?)(?P=q):\s*(#.*)?$""")


def datasets(path: Path) -> list[tuple[str, dict, str]]:
    """The catalog entries of one file, in file order: (name, its mapping, the comment directly above it)."""
    data = yaml.safe_load(path.read_text()) or {}
    out, above = [], []
    for line in path.read_text().splitlines():
        if not line.strip():
            above = []
        elif _ruler(line):
            above = []
        elif line.startswith("#"):
            above.append(_comment_text(line.strip()))
        elif not line.startswith((" ", "\t")):
            m = TOP_KEY.match(line)
            if m and m["key"] in data and not m["key"].startswith("_"):
                out.append((m["key"], data[m["key"]], _join(above)))
            above = []
    return out


def render_catalog(root: Path = ROOT) -> str:
    parts = [
        "# Data catalog",
        "",
        "<!-- Generated by scripts/parameters_reference.py from conf/base/catalog*.yml:",
        "     do not edit by hand; change the YAML file and run the script again. -->",
        "",
        "Every dataset the pipelines read and write (`conf/base/catalog*.yml`), generated from the",
        "catalog files and their comments. A versioned dataset writes `<file>/<timestamp>/<file name>`",
        "and a stage run alone loads the newest version. Names with `{method}` are dataset factories:",
        "one entry for every `compare.<method>` namespace.",
        "",
    ]
    for path in catalog_files(root):
        parts += [f"## `{path.name}`", ""]
        head = _file_comment(path)
        if head:
            parts += [head, ""]
        parts += ["| dataset | type | file | layer | what it holds |", "|---|---|---|---|---|"]
        for name, spec, comment in datasets(path):
            spec = spec if isinstance(spec, dict) else {}
            kind = str(spec.get("type", ""))
            if spec.get("artifact"):
                kind += f" (`{spec['artifact']}`)"
            where = spec.get("filepath") or spec.get("storage") or ""
            if where and spec.get("versioned"):
                where = f"{where} (versioned)"
            layer = ((spec.get("metadata") or {}).get("kedro-viz") or {}).get("layer", "")
            cells = [f"`{name}`", _cell(kind), f"`{_cell(str(where))}`" if where else "", layer, _cell(comment)]
            parts.append("| " + " | ".join(cells) + " |")
        parts.append("")
    return "\n".join(parts)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def render(root: Path = ROOT) -> str:
    parts = [
        "# Parameters",
        "",
        "<!-- Generated by scripts/parameters_reference.py from the comments of conf/base/parameters*.yml:",
        "     do not edit by hand; change the YAML file and run the script again. -->",
        "",
        "Every parameter of `conf/base`, its default and its meaning, generated from the parameter files'",
        "own comments (the files are the one place a parameter is explained). Override a key in",
        "`conf/local/parameters_<name>.yml` (not committed) or for one run with `--params key=value`;",
        "both override `conf/base` key by key ([Running the pipelines](../guides/pipelines.md#parameters)).",
        "The paper's settings are in `conf/paper` (`--env paper`). A key that is missing is an error that",
        "names it: the code holds no second set of defaults.",
        "",
    ]
    for path in parameter_files(root):
        rows = entries(path)
        title = " (kedro-mlflow's configuration, read only when tracking.mlflow is true)" if path.name == "mlflow.yml" else ""
        parts += [f"## `{path.name}`{title}", ""]
        head = _file_comment(path)
        if head:
            parts += [head, ""]
        parts += ["| key | default | meaning |", "|---|---|---|"]
        for e in rows:
            default = f"`{_cell(e.default)}`" if e.default else ""
            parts.append(f"| `{e.key}` | {default} | {_cell(e.meaning)} |")
        parts.append("")
    return "\n".join(parts)


def _file_comment(path: Path) -> str:
    """The comment lines that open a file, when a blank line follows them (directly above a key they
    are that key's own)."""
    head: list[str] = []
    for line in path.read_text().splitlines():
        if not line.strip().startswith("#"):
            return " ".join(head) if not line.strip() else ""
        head.append(line.strip().lstrip("#").strip())
    return " ".join(head)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a page is out of date")
    args = parser.parse_args(argv)
    stale = []
    for page, text in ((PAGE, render()), (CATALOG_PAGE, render_catalog())):
        path = ROOT / page
        if args.check:
            if not path.is_file() or path.read_text() != text:
                stale.append(str(page))
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {page}")
    if stale:
        print(f"{', '.join(stale)} out of date with conf/base: run python scripts/parameters_reference.py",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
