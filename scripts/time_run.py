"""Time a `kedro run` (or `make quick`, or any command) in one piece, as a new user meets it.

    python scripts/time_run.py --out timing.json -- kedro run
    python scripts/time_run.py --out timing.json -- make quick

The command runs in a fresh copy of this project, as a new user's clone has it plus their own
settings: ``conf/`` with ``conf/local``, the raw inputs of ``data/01_raw`` (linked, not copied), and
every other data layer empty (nothing reused from earlier runs: no study, no decoded images, no model). It runs with this
checkout's ``.venv/bin`` first on ``PATH`` (the install ``make run`` made), so time ``kedro`` commands
(a ``make`` target would make a second venv in the copy first; ``make quick`` is
``kedro run --params "..."``, docs/guides/first-run.md). Every line of its output is echoed with the seconds since the start; the
``Running node:`` lines of Kedro mark where each node starts, so the summary has the time of each node
as well as the wall time of the whole command.

Written to ``--out`` (JSON) and printed as a Markdown table: the command, its exit status, the wall
time, the time of each node, and what makes a number comparable: the commit (and whether the working tree
differed from it: the copy and the venv's editable install run the working tree), the CPU model,
whether it has AVX-512 (machines of this project's kind differ 4-5x in speed on that alone), the number
of cores, the torch version and the load average before and after. A load average near the number of
cores means something else shared the machine: the script warns, and such a timing says little.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from evotune.machine import avx512_label, cpu_facts
from evotune.report.markdown import format_duration

ROOT = Path(__file__).resolve().parents[1]
NODE = re.compile(r"Running node: ([\w.\-]+)")
#: a 1-minute load average above this share of the cores at the start: the machine is not quiet
BUSY_SHARE = 0.25


def machine() -> dict:
    """The facts that make a timing comparable with another one."""
    import torch

    return {**cpu_facts(), "python": platform.python_version(), "torch": torch.__version__}


def commit(root: Path) -> dict:
    """The checkout's commit and whether its tracked files differ from it (None outside a git checkout)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout.strip()

    try:
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None}


#: what the copy leaves out at the project's top level: version control, the venv, built and cached files
NOT_COPIED = {".git", ".venv", "site", "mutants", ".mypy_cache", ".pytest_cache", ".ruff_cache", "data"}


def fresh_copy(root: Path, dst: Path) -> None:
    """``root`` as a new user's clone with their settings has it: conf/ (conf/local too), data/01_raw (a link),
    the other data layers empty."""
    shutil.copytree(root, dst, dirs_exist_ok=True, symlinks=True,
                    ignore=lambda d, names: [n for n in names if (Path(d) == root and n in NOT_COPIED)
                                             or n == "__pycache__"])
    for layer in sorted((root / "data").iterdir()) if (root / "data").is_dir() else ():
        if layer.is_dir():
            if layer.name == "01_raw":  # a user's inputs (and downloads): shared, not copied
                (dst / "data" / layer.name).parent.mkdir(parents=True, exist_ok=True)
                (dst / "data" / layer.name).symlink_to(layer.resolve(), target_is_directory=True)
            else:
                (dst / "data" / layer.name).mkdir(parents=True)


def node_times(starts: list[tuple[str, float]], end: float) -> list[dict]:
    """Each node's seconds: from its ``Running node`` line to the next one (the last one: to the end)."""
    out = []
    for i, (name, t) in enumerate(starts):
        stop = starts[i + 1][1] if i + 1 < len(starts) else end
        out.append({"node": name, "start_s": round(t, 1), "seconds": round(stop - t, 1)})
    return out


def timed(command: list[str], cwd: Path, env: dict[str, str]) -> tuple[int, float, list[tuple[str, float]]]:
    """Run ``command`` in ``cwd``, echoing each output line with its time; its status, wall time, node starts."""
    starts: list[tuple[str, float]] = []
    t0 = time.perf_counter()
    proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            bufsize=1)
    assert proc.stdout is not None
    for line in proc.stdout:
        t = time.perf_counter() - t0
        m = NODE.search(line)
        if m:
            starts.append((m.group(1), t))
        sys.stdout.write(f"[{t:8.1f}s] {line}")
        sys.stdout.flush()
    rc = proc.wait()
    return rc, time.perf_counter() - t0, starts


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [
        f"`{' '.join(result['command'])}`: **{format_duration(result['wall_s'])}** (exit {result['returncode']}), "
        f"{result['date']}, commit `{(result['commit'] or 'none')[:7]}`"
        f"{' (working tree differs)' if result['dirty'] else ''}",
        f"on {m['cpu']} ({avx512_label(m['avx512'])}), {m['cores']} cores, torch {m['torch']}; "
        f"load average {result['load_before']:.2f} before, {result['load_after']:.2f} after",
        "",
        "| node | seconds |",
        "|---|---|",
        *(f"| {n['node']} | {n['seconds']:.1f} |" for n in result["nodes"]),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                usage="%(prog)s [--out FILE] [--keep DIR] -- COMMAND ...")
    p.add_argument("--out", type=Path, help="write the timing here (JSON)")
    p.add_argument("--keep", type=Path, help="make the fresh copy here and keep it (default: a temporary folder)")
    p.add_argument("command", nargs=argparse.REMAINDER, help="the command, after --")
    args = p.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        p.error("give the command to time after --, e.g. -- kedro run")
    if args.keep and args.keep.exists() and any(args.keep.iterdir()):
        p.error(f"--keep {args.keep}: the folder is not empty; the run needs a fresh copy")

    facts = commit(ROOT)
    if facts["dirty"]:
        print("time_run: the working tree differs from HEAD: commit first for a timing that names its code",
              file=sys.stderr)
    load_before = os.getloadavg()[0]
    cores = os.cpu_count() or 1
    if load_before > BUSY_SHARE * cores:
        print(f"time_run: load average {load_before:.2f} on {cores} cores: the machine is busy; this timing will "
              f"not be a quiet one", file=sys.stderr)

    workdir = args.keep or Path(tempfile.mkdtemp(prefix="evotune-time-"))
    try:
        fresh_copy(ROOT, workdir)
        # wide lines: Kedro's rich log wraps at 80 columns when piped, and could split a node's name
        env = dict(os.environ, KEDRO_DISABLE_TELEMETRY="1", DO_NOT_TRACK="1", COLUMNS="250")
        venv_bin = ROOT / ".venv" / "bin"
        if venv_bin.is_dir():
            env["PATH"] = f"{venv_bin}{os.pathsep}{env.get('PATH', '')}"
        rc, wall, starts = timed(command, workdir, env)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)

    result = {
        "command": command, "returncode": rc, "wall_s": round(wall, 1),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"), **facts,
        "machine": machine(), "load_before": round(load_before, 2), "load_after": round(os.getloadavg()[0], 2),
        "nodes": node_times(starts, wall),
    }
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(markdown(result))
    return rc


if __name__ == "__main__":
    sys.exit(main())
